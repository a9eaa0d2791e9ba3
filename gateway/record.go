package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/cascade-gateway/cascade/costing"
	"go.opentelemetry.io/otel/trace"
)

// finish completes the record of a request that reached a backend, hands it
// to the recorder and puts its facts on the request's server span (ending
// the span when the request is a stream, which the middleware left open).
// It runs once per such request, whatever its outcome, and never blocks:
// pricing is arithmetic on the snapshot's pricer and the recorder only queues.
func (g *Gateway) finish(s *snapshot, span trace.Span, rec *costing.Record, stream bool) {
	s.pricer.Price(rec)
	g.opts.Recorder.Record(*rec)
	g.tel.record(s, rec)
	annotate(span, rec, stream)
}

// keyID names the caller's API key in records without revealing it: the
// first 8 bytes of the SHA-256 of the bearer token, in hex. "" when the
// request carried no bearer token.
func keyID(authorization string) string {
	const bearer = "Bearer "
	if len(authorization) <= len(bearer) || !strings.EqualFold(authorization[:len(bearer)], bearer) {
		return ""
	}
	tok := strings.TrimSpace(authorization[len(bearer):])
	if tok == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:8])
}
