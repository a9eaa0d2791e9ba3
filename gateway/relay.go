package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cascade-gateway/cascade/backends"
	"github.com/cascade-gateway/cascade/costing"
)

var errStreamBroken = errors.New("upstream stream broke off")

// relay copies the upstream SSE stream to the client event by event. It
// runs after the handler returned, on fasthttp's stream writer, and sets the
// exchange's outcome; the caller ends the exchange. A stream that cannot end
// normally (the backend broke off, stalled, sent garbage, or the gateway is
// shutting down) ends with an error event that every SSE parser sees: any
// partial event is closed first.
//
// held, when not nil, is a cheap answer the cascade held back and passed:
// its events go out first, then the rest of its stream is relayed live,
// without the logprobs the gateway asked for on its own account.
func (x *exchange) relay(ctx context.Context, cancel context.CancelFunc, resp *backends.Response, held *firstAnswer,
	w *bufio.Writer, capture *strings.Builder, keepUsage bool) {
	defer cancel()
	idleFor := x.s.cfg.Timeouts.StreamIdle
	var idleFired atomic.Bool
	idle := time.AfterFunc(idleFor, func() { idleFired.Store(true); cancel() })
	defer idle.Stop()
	var sc *backends.StreamScanner
	var ev eventState
	strip := false
	if held != nil {
		sc, strip = held.sc, held.strip
		for rest := held.held; len(rest) > 0; {
			line := rest
			if i := bytes.IndexByte(rest, '\n'); i >= 0 {
				line = rest[:i+1]
			}
			rest = rest[len(line):]
			if strip {
				line = stripEvent(line)
			}
			if capture != nil {
				captureChunk(capture, line)
			}
			w.Write(line)
			ev.wrote(line)
		}
		if len(held.held) > 0 {
			x.rec.TTFT = x.g.now().Sub(x.start)
		}
	} else {
		sc = backends.NewStreamScanner(resp.Body)
	}
	x.outcome = costing.OutcomeServed
	if x.rec.Move == costing.MoveUp {
		x.outcome = costing.OutcomeFallbackUp
	} else if x.rec.Move == costing.MoveDown {
		x.outcome = costing.OutcomeDegradedDown
	}
	var result error
	first := held == nil || len(held.held) == 0
	if !first && !sc.LineReady() && w.Flush() != nil {
		x.outcome, result = costing.OutcomeClientCancelled, context.Canceled
		cancel()
	}
	for result == nil {
		line, err := sc.Next()
		if len(line) > 0 {
			if capture != nil {
				captureChunk(capture, line)
			}
			idle.Reset(idleFor)
			if first {
				x.rec.TTFT = x.g.now().Sub(x.start)
				first = false
			}
			if keepUsage || !sc.UsageOnly {
				if strip {
					line = stripEvent(line)
				}
				w.Write(line)
				ev.wrote(line)
			}
			// At the end of an event, flush unless more has already arrived.
			if (line[0] == '\n' || line[0] == '\r') && !sc.LineReady() && w.Flush() != nil {
				x.outcome, result = costing.OutcomeClientCancelled, context.Canceled
				cancel() // stop the GPU working for nobody
				break
			}
		}
		if err == nil {
			continue
		}
		if err == io.EOF && sc.Done {
			break
		}
		// The upstream broke off, stalled or lied: tell the client instead
		// of ending a 200 that looks complete.
		msg := "the model backend's stream broke off before it finished"
		code := "stream_interrupted"
		x.outcome, result = costing.OutcomeUpstreamError, errStreamBroken
		switch {
		case x.g.stopping.Err() != nil:
			msg, code = "the gateway shut down before the answer was complete", "shutting_down"
			x.outcome, result = costing.OutcomeShutdown, context.Canceled
		case idleFired.Load():
			msg = "the model backend sent nothing for longer than timeouts.stream_idle"
			x.outcome, result = costing.OutcomeTimeout, backends.ErrTimeout
		case ctx.Err() != nil:
			msg = "the request exceeded timeouts.total"
			x.outcome, result = costing.OutcomeTimeout, backends.ErrTimeout
		case errors.Is(err, backends.ErrInvalidResponse):
			msg, code = "the model backend sent a malformed event", "upstream_invalid_response"
			x.outcome, result = costing.OutcomeInvalidResponse, err
		}
		ev.close(w)
		w.WriteString("data: ")
		w.Write(errorBody(&apiError{Type: "upstream_error", Code: code,
			Message: msg + " (tier " + x.rec.Tier + ", request id " + x.rec.RequestID + ")"}))
		w.WriteString("\n\n")
		w.Flush()
	}
	if result == nil {
		w.Flush() // the last events, when more had seemed to be on the way
	}
	if capture != nil {
		captureText(x.span, capture.String(), sc.Usage.FinishReason)
	}
	resp.RecordUsage(sc.Usage)
	resp.Finish(result)
	x.setTokens(sc.Usage, sc.Chunks*4)
}

// eventState tracks where the bytes written to the client stand in the SSE
// framing, so an error event is never glued onto a partial one.
type eventState struct {
	midLine  bool // the last write did not end its line
	midEvent bool // a line of an unfinished event was written
}

func (e *eventState) wrote(line []byte) {
	last := line[len(line)-1]
	if e.midLine {
		e.midLine = last != '\n'
		return
	}
	blank := line[0] == '\n' || (line[0] == '\r' && len(line) <= 2)
	e.midLine = last != '\n'
	e.midEvent = !blank
}

// close ends a partial line and a partial event with the blank line that
// SSE parsers dispatch on.
func (e *eventState) close(w *bufio.Writer) {
	if e.midLine {
		w.WriteString("\n")
		e.midEvent = true
	}
	if e.midEvent {
		w.WriteString("\n")
	}
	e.midLine, e.midEvent = false, false
}
