package gateway

import (
	"go.opentelemetry.io/otel/metric"

	"github.com/cascade-gateway/cascade/costing"
)

// recorderGauges observe a recorder that counts its work.
type recorderGauges struct {
	stats   costing.StatsReporter
	depth   metric.Int64ObservableGauge
	dropped metric.Int64ObservableCounter
	insts   []metric.Observable
}

// newRecorderGauges returns nil when rec does not report statistics.
func newRecorderGauges(m metric.Meter, rec costing.Recorder) (*recorderGauges, error) {
	sr, ok := rec.(costing.StatsReporter)
	if !ok {
		return nil, nil
	}
	r := &recorderGauges{stats: sr}
	var err error
	if r.depth, err = m.Int64ObservableGauge("cascade.recorder.queue_depth", metric.WithUnit("{record}"),
		metric.WithDescription("Records accepted and not yet written to Redis or dropped.")); err != nil {
		return nil, err
	}
	if r.dropped, err = m.Int64ObservableCounter("cascade.recorder.dropped", metric.WithUnit("{record}"),
		metric.WithDescription("Records lost: queue full, flush failed for good, or not drained at shutdown.")); err != nil {
		return nil, err
	}
	r.insts = []metric.Observable{r.depth, r.dropped}
	return r, nil
}

func (r *recorderGauges) observe(o metric.Observer) {
	st := r.stats.Stats()
	o.ObserveInt64(r.depth, st.Queued)
	o.ObserveInt64(r.dropped, st.Dropped)
}
