package gateway

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/sjson"
	"go.opentelemetry.io/otel/trace"

	"github.com/cascade-gateway/cascade/backends"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/router"
)

const (
	headerRequestID = "X-Request-Id"
	headerTier      = "X-Cascade-Tier"
	headerModel     = "X-Cascade-Model"
	headerScore     = "X-Cascade-Score"
	headerEscalated = "X-Cascade-Escalated"
	headerDegraded  = "X-Cascade-Degraded"
	headerFallback  = "X-Cascade-Fallback"
)

// maxResponseBytes bounds a non-streaming upstream answer held in memory.
const maxResponseBytes = 64 << 20

func (g *Gateway) requestID(c *fiber.Ctx) error {
	id := c.Get(headerRequestID)
	if id == "" || len(id) > 128 {
		id = newRequestID()
	} else {
		id = string([]byte(id)) // outlives the fiber context
	}
	c.Locals(headerRequestID, id)
	c.Set(headerRequestID, id)
	return c.Next()
}

func newRequestID() string {
	var b [16]byte
	for i := 0; i < 16; i += 8 {
		v := rand.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return hex.EncodeToString(b[:])
}

// complete serves /v1/chat/completions (chat) and /v1/completions. It
// decides, tries tiers until one answers, and relays the answer; the
// exchange ends in one outcome, recorded here for plain answers and errors,
// or by the relay for streams.
func (g *Gateway) complete(c *fiber.Ctx, chat bool) error {
	x := &exchange{g: g, s: g.snap.Load(), start: g.now(), span: trace.SpanFromContext(c.UserContext())}
	x.rec = costing.Record{Time: x.start, RequestID: c.Locals(headerRequestID).(string),
		KeyID: keyID(c.Get(fiber.HeaderAuthorization)), TraceID: traceID(x.span)}
	streaming, err := x.serve(c, chat)
	if !streaming {
		x.end(false)
	}
	return err
}

// serve runs the exchange up to the answer. It reports true when a stream
// was handed to the relay, which then owns the exchange.
func (x *exchange) serve(c *fiber.Ctx, chat bool) (bool, error) {
	g, s := x.g, x.s
	x.outcome = costing.OutcomeRejected
	body, err := requestBody(c, s.cfg.MaxBodyBytes)
	if err != nil {
		return false, writeError(c, err)
	}
	req, err := parseRequest(body, chat, s.cfg.MaxJSONDepth)
	if err != nil {
		return false, writeError(c, err)
	}
	x.req = req
	x.rec.Stream = req.Stream
	rt, ok := s.models[req.Model]
	if !ok {
		return false, writeError(c, unknownModel(req.Model))
	}
	if rt.auto {
		if x.dec, err = s.policy.Route(req.Model, c.Get(headerTier), &req.Input); err != nil {
			if errors.Is(err, router.ErrContextLength) {
				return false, writeError(c, contextTooLong(err))
			}
			return false, writeError(c, s.badTierHeader(err))
		}
	} else {
		x.dec.Tier = rt.tier
		if !s.policy.Fits(rt.tier, &req.Input) {
			return false, writeError(c, contextTooLong(fmt.Errorf("%w: the prompt and max_tokens do not fit tier %q", router.ErrContextLength, rt.tier)))
		}
	}
	x.rec.Escalated, x.rec.Reason, x.rec.Score = x.dec.Escalated, x.dec.Reason, x.dec.Score
	routed(s, x.span, req, &x.dec)
	captureInput(s, x.span, req)
	for _, m := range req.Messages {
		x.promptChars += len(m.Content)
	}

	path := "/completions"
	if chat {
		path = "/chat/completions"
	}
	hdr := http.Header{headerRequestID: {x.rec.RequestID}}
	askUsage := req.Stream && !req.IncludeUsage
	// One deadline for every first byte of the attempt chain, fallback and
	// escalation included. It is wall-clock time, not the records' clock.
	deadline := time.Now().Add(s.cfg.Timeouts.AttemptsTotal)
	up := &backends.Request{Path: path, Header: hdr, Body: upstreamBody(body, askUsage), Deadline: deadline, Stream: req.Stream}
	first := up // what the router's tier is sent
	strip := false
	if x.dec.Cascade {
		var cb []byte
		cb, strip = cascadeBody(body, chat, s.cfg.Routing.Cascade.TopLogprobs)
		first = &backends.Request{Path: path, Header: hdr, Body: upstreamBody(cb, askUsage), Deadline: deadline, Stream: req.Stream}
	}

	ctx, cancel := context.WithTimeout(c.UserContext(), s.cfg.Timeouts.Total)
	unstop := context.AfterFunc(g.stopping, cancel) // shutdown ends what is still running
	watch := watchClient(c, cancel)                 // a client hanging up cancels ctx (disconnect.go)
	fail := func(err error) (bool, error) {
		gone := watch.stop()
		unstop()
		cancel()
		x.outcome = outcomeOf(err, gone, g.stopping.Err() != nil)
		if x.rec.Endpoint == "" || x.rec.InputTokens == 0 {
			x.setTokens(backends.Usage{}, 0) // the prompt was processed; what was generated is unknown
		}
		if gone {
			return false, nil
		}
		if ra := backends.RetryAfter(err); ra > 0 {
			c.Set(fiber.HeaderRetryAfter, strconv.Itoa(int((ra+time.Second-1)/time.Second)))
		}
		return false, writeError(c, x.failure(err))
	}
	actx, acut := ctx, context.CancelFunc(func() {})
	if x.dec.Cascade {
		actx, acut = context.WithCancel(ctx) // the cheap attempt may be abandoned alone
	}
	resp, err := x.send(actx, first, x.dec.Tier, true)
	if err != nil {
		acut()
		return fail(err)
	}
	var held *firstAnswer
	if x.dec.Cascade && resp.Endpoint.Tier == x.dec.Tier {
		f := &firstAnswer{x: x, resp: resp, strip: strip, cut: acut, keepUsage: req.IncludeUsage}
		if resp, held, err = x.cascade(ctx, f, up); err != nil {
			x.served(f.resp.Endpoint)
			return fail(err)
		}
	}
	x.served(resp.Endpoint)
	x.headers(c)

	if !req.Stream {
		var data []byte
		var rerr error
		if held != nil {
			data = held.body
			if held.strip {
				data = stripLogprobs(data)
			}
		} else {
			data, rerr = resp.ReadAnswer(s.cfg.Timeouts.StreamIdle, maxResponseBytes)
		}
		gone := watch.stop()
		unstop()
		var u backends.Usage
		if rerr == nil {
			u = backends.ParseUsage(data)
			resp.RecordUsage(u)
		} else if gone {
			rerr = context.Canceled // the client left: not the backend's failure
		}
		resp.Finish(rerr)
		acut()
		cancel()
		x.rec.TTFT = g.now().Sub(x.start)
		if rerr != nil {
			x.outcome = outcomeOf(rerr, gone, g.stopping.Err() != nil)
			if ctx.Err() != nil && x.outcome == costing.OutcomeUpstreamError {
				x.outcome = costing.OutcomeTimeout // timeouts.total ended the body
			}
			x.setTokens(backends.Usage{}, 0) // the prompt was processed; what was generated is unknown
			if gone {
				return false, nil
			}
			return false, writeError(c, x.failure(rerr))
		}
		outChars := 0 // only needed to estimate when usage is missing
		if !u.Reported {
			outChars = len(jsonString(data, "choices.0.message.content")) + len(jsonString(data, "choices.0.text"))
		}
		x.setTokens(u, outChars)
		captureOutput(s, x.span, data, u.FinishReason)
		c.Status(resp.StatusCode)
		c.Set(fiber.HeaderContentType, resp.Header.Get(fiber.HeaderContentType))
		return false, c.Send(data)
	}

	if watch.stop() { // the client left before the first chunk
		unstop()
		resp.Finish(context.Canceled)
		acut()
		cancel()
		x.outcome = costing.OutcomeClientCancelled
		x.setTokens(backends.Usage{}, 0)
		return false, nil
	}
	c.Status(http.StatusOK)
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set("X-Accel-Buffering", "no")
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer x.end(true)
		defer unstop()
		defer acut()
		x.relay(ctx, cancel, resp, held, w, newCapture(s, x.span), req.IncludeUsage)
	})
	return true, nil
}

// send tries tier and, when fallback is on and it has no endpoint
// available, the tiers it may fall back to. The record names what a failed
// chain tried last.
func (x *exchange) send(ctx context.Context, req *backends.Request, tier string, fallback bool) (*backends.Response, error) {
	s := x.s
	order := []string{tier}
	if fallback {
		order = s.tryOrder(tier)
	}
	var err error
	for _, t := range order {
		if t != tier && !s.policy.Fits(t, &x.req.Input) {
			continue // a fallback never goes where the request does not fit
		}
		var resp *backends.Response
		resp, err = s.pools[t].Send(ctx, x.g.registry.Client(), req, s.cfg.Retries)
		if err == nil {
			return resp, nil
		}
		x.tried(t, err)
		if !errors.Is(err, backends.ErrUnavailable) && !errors.Is(err, backends.ErrTimeout) {
			break
		}
	}
	return nil, err
}

// headers tell the client which tier and model answered and why.
func (x *exchange) headers(c *fiber.Ctx) {
	c.Set(headerTier, x.rec.Tier)
	c.Set(headerModel, x.rec.Model)
	c.Set(headerScore, strconv.FormatFloat(x.dec.Score, 'f', 4, 64))
	esc := x.dec.Reason
	if !x.dec.Escalated {
		esc = "false"
	}
	c.Set(headerEscalated, esc)
	if x.rec.Cascaded {
		c.Set(headerConfidence, strconv.FormatFloat(1-x.rec.Verifier, 'f', 4, 64))
		if x.escalationLost {
			c.Set(headerDegraded, "escalation_unavailable")
		}
	}
	switch x.rec.Move {
	case costing.MoveUp:
		c.Set(headerFallback, "up")
	case costing.MoveDown:
		c.Set(headerFallback, "down")
		c.Set(headerDegraded, "fallback")
	}
}

// unknownModel is the 404 for a model name that is no alias, tier or
// upstream model.
func unknownModel(name string) *apiError {
	return &apiError{Status: 404, Type: "invalid_request_error", Code: "model_not_found", Param: "model",
		Message: "The model '" + name + "' does not exist. Use \"auto\", an alias, a tier or a model listed by GET /v1/models."}
}

// contextTooLong is the 400 for a request that fits no tier it may go to.
func contextTooLong(err error) *apiError {
	return &apiError{Status: 400, Type: "invalid_request_error", Code: "context_length_exceeded", Param: "messages",
		Message: err.Error() + "; shorten the prompt or lower max_tokens"}
}

// badTierHeader is the 400 for an X-Cascade-Tier header that names no tier.
func (s *snapshot) badTierHeader(err error) *apiError {
	return badRequest(headerTier, "header %s: %v; use one of %s", headerTier, err, strings.Join(s.tiers, ", "))
}

// upstreamBody returns a builder of the bytes sent to an endpoint: the
// client's body with only the model name replaced and, with askUsage (a
// stream whose client did not ask for it), usage requested in the final
// chunk. Bodies are built once per model name.
func upstreamBody(body []byte, askUsage bool) func(*backends.Endpoint) []byte {
	var lastModel string
	var last []byte
	return func(e *backends.Endpoint) []byte {
		if last != nil && e.Model == lastModel {
			return last
		}
		b, err := sjson.SetBytes(body, "model", e.Model)
		if err == nil && askUsage {
			b, err = sjson.SetBytes(b, "stream_options.include_usage", true)
		}
		if err != nil { // cannot happen on a body that parsed
			b = body
		}
		lastModel, last = e.Model, b
		return b
	}
}

// tryOrder is the tier and the tiers it may fall back to, in order.
func (s *snapshot) tryOrder(tier string) []string {
	idx := 0
	for i, t := range s.tiers {
		if t == tier {
			idx = i
		}
	}
	order := make([]string, 0, len(s.tiers))
	order = append(order, tier)
	if idx < len(s.tiers)-1 && s.cfg.Fallback.SmallToLarge {
		order = append(order, s.tiers[idx+1:]...)
	}
	if idx > 0 && s.cfg.Fallback.LargeToSmall {
		for i := idx - 1; i >= 0; i-- {
			order = append(order, s.tiers[i])
		}
	}
	return order
}

// cheaper reports whether tier a comes before tier b (is less capable).
func (s *snapshot) cheaper(a, b string) bool {
	ia, ib := -1, -1
	for i, t := range s.tiers {
		if t == a {
			ia = i
		}
		if t == b {
			ib = i
		}
	}
	return ia < ib
}
