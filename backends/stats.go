package backends

import (
	"math"
	"sync/atomic"
	"time"
)

// Smoothing factors of the per-endpoint moving averages. A new observation
// moves the latency average by a tenth of the difference (about the last 20
// requests matter) and the error rate by a twentieth (about the last 40).
const (
	latencyAlpha   = 0.1
	errorRateAlpha = 0.05
)

// ewma is a lock-free exponentially weighted moving average of float64s.
// The zero value is 0; with seed, the first observation replaces an exact 0
// (used for latencies, which are never exactly 0).
type ewma struct {
	bits atomic.Uint64 // math.Float64bits of the average
}

func (a *ewma) add(v, alpha float64, seed bool) {
	for {
		old := a.bits.Load()
		next := v
		if !seed || old != 0 {
			cur := math.Float64frombits(old)
			next = cur + alpha*(v-cur)
		}
		if a.bits.CompareAndSwap(old, math.Float64bits(next)) {
			return
		}
	}
}

func (a *ewma) value() float64 { return math.Float64frombits(a.bits.Load()) }

// observeLatency feeds the recent-latency average: the time from sending a
// request to the upstream's response headers.
func (e *Endpoint) observeLatency(d time.Duration) {
	e.latency.add(float64(d)/float64(time.Millisecond), latencyAlpha, true)
}

// observeOutcome feeds the error-rate average. Failures are what the breaker
// counts as failures; a client hanging up or a 4xx caused by the request is
// not the endpoint's fault.
func (e *Endpoint) observeOutcome(err error) {
	v := 0.0
	if failed(err) {
		v = 1
	}
	e.errRate.add(v, errorRateAlpha, false)
}

// finish reports an exchange's outcome to the breaker (through done) and to
// the endpoint's error rate.
func (e *Endpoint) finish(done func(error), err error) {
	e.observeOutcome(err)
	done(err)
}

// LatencyMS is the moving average, in milliseconds, of the time the endpoint
// took to answer with response headers (time to first byte for streams, the
// whole generation for non-streaming requests). 0 before any success.
func (e *Endpoint) LatencyMS() float64 { return e.latency.value() }

// ErrorRate is the moving average share of recent exchanges that failed
// (connection errors, timeouts, 5xx, streams broken off), within [0, 1].
func (e *Endpoint) ErrorRate() float64 { return e.errRate.value() }
