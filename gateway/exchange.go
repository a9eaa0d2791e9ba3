package gateway

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/cascade-gateway/cascade/backends"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/router"
)

// exchange is one API request on its way through the gateway, from the
// parsed request to the one outcome it ends in. Whoever owns the exchange
// last (the handler, or the stream relay once the handler handed the answer
// over) calls end exactly once; end feeds the record, the metrics and the
// server span from the same facts.
type exchange struct {
	g     *Gateway
	s     *snapshot
	span  trace.Span // the server span (telemetry.go)
	start time.Time
	req   *request // nil when the body did not parse
	dec   router.Decision
	rec   costing.Record
	// outcome is how the request ended, set where that became known.
	outcome costing.Outcome
	// promptChars estimates input tokens when a backend reports no usage.
	promptChars int
	ended       bool
	// escalationLost: the verifier doubted the cheap answer but the last
	// tier could not answer, so the cheap answer was served.
	escalationLost bool
}

// end completes and hands on the exchange's record. stream says whether
// the server span is still open (a relayed stream) and must be ended here.
func (x *exchange) end(stream bool) {
	if x.ended {
		return
	}
	x.ended = true
	x.rec.Outcome = x.outcome
	x.rec.Latency = x.g.now().Sub(x.start)
	x.g.finish(x.s, x.span, &x.rec, stream)
}

// served records which endpoint answered and how the tier it belongs to
// relates to the router's choice.
func (x *exchange) served(e *backends.Endpoint) {
	x.rec.Tier, x.rec.Model, x.rec.Endpoint = e.Tier, e.Model, e.URL
	x.outcome = costing.OutcomeServed
	x.rec.Move = costing.MoveNone
	switch {
	case e.Tier == x.dec.Tier:
	case x.s.cheaper(x.dec.Tier, e.Tier):
		x.rec.Move, x.outcome = costing.MoveUp, costing.OutcomeFallbackUp
	default:
		x.rec.Move, x.outcome = costing.MoveDown, costing.OutcomeDegradedDown
	}
	x.g.moves.note(x.start, x.rec.Move, x.dec.Tier, e.Tier)
}

// tried records the endpoint a failed attempt chain reached last, so the
// record of a failed request says who was asked. Move stays none: it says
// where a request was served, and fallback rates, rollups and metrics
// count it, so a chain that failed on a fallback tier is no fallback.
func (x *exchange) tried(tier string, err error) {
	x.rec.Tier = tier
	if e := backends.TriedEndpoint(err); e != nil {
		x.rec.Tier, x.rec.Model, x.rec.Endpoint = e.Tier, e.Model, e.URL
	}
	x.rec.Move = costing.MoveNone
}

// errShutdown ends requests still running when the gateway's shutdown
// grace is nearly over.
var errShutdown = errors.New("the gateway is shutting down")

// outcomeOf classifies the error that ended an exchange. gone reports a
// client that hung up; stopping a gateway shutting down.
func outcomeOf(err error, gone, stopping bool) costing.Outcome {
	var ue *backends.UpstreamError
	switch {
	case gone:
		return costing.OutcomeClientCancelled
	case stopping:
		return costing.OutcomeShutdown
	case errors.Is(err, backends.ErrInvalidResponse):
		return costing.OutcomeInvalidResponse
	case errors.Is(err, backends.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return costing.OutcomeTimeout
	case errors.As(err, &ue) && ue.Status >= 400 && ue.Status < 500 && ue.Status != http.StatusTooManyRequests:
		return costing.OutcomeClientError
	case errors.Is(err, context.Canceled):
		return costing.OutcomeClientCancelled
	}
	return costing.OutcomeUpstreamError
}

// failure is the client-facing error for an exchange that ended in err: it
// names the tier and the request id, never an internal address (those go to
// the log).
func (x *exchange) failure(err error) *apiError {
	var ae *apiError
	switch x.outcome {
	case costing.OutcomeShutdown:
		ae = &apiError{Status: http.StatusServiceUnavailable, Type: "service_unavailable", Code: "shutting_down",
			Message: "the gateway shut down before the answer was complete; retry on another replica"}
	case costing.OutcomeInvalidResponse:
		ae = &apiError{Status: http.StatusBadGateway, Type: "upstream_error", Code: "upstream_invalid_response",
			Message: "the model backend answered with something that is not a valid completion"}
	default:
		ae = toAPIError(err)
	}
	if ae.Type == "upstream_error" || ae.Status >= 500 {
		var b strings.Builder
		b.WriteString(ae.Message)
		if x.rec.Tier != "" {
			b.WriteString(" (tier ")
			b.WriteString(x.rec.Tier)
			b.WriteString(", request id ")
		} else {
			b.WriteString(" (request id ")
		}
		b.WriteString(x.rec.RequestID)
		b.WriteString(")")
		cp := *ae
		cp.Message = b.String()
		ae = &cp
	}
	return ae
}

// setTokens fills token counts from usage, or estimates them (4 bytes a
// token) when the backend reported none: the prompt was processed even when
// the answer failed, and what was generated so far was paid for.
func (x *exchange) setTokens(u backends.Usage, outChars int) {
	rec := &x.rec
	if u.Reported {
		rec.InputTokens, rec.OutputTokens, rec.Estimated = u.InputTokens, u.OutputTokens, false
		return
	}
	rec.Estimated = true
	rec.InputTokens = (x.promptChars + 3) / 4
	rec.OutputTokens = (outChars + 3) / 4
}
