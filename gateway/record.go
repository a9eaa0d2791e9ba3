package gateway

import "github.com/cascade-gateway/cascade/costing"

// finish completes the record of a request that reached a backend and hands
// it to the recorder. It runs once per such request, whatever its outcome,
// and never blocks.
func (g *Gateway) finish(s *snapshot, rec *costing.Record) {
	_ = s
	g.opts.Recorder.Record(*rec)
}
