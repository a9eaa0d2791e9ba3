package gateway

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
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

// complete serves /v1/chat/completions (chat) and /v1/completions.
func (g *Gateway) complete(c *fiber.Ctx, chat bool) error {
	start := g.now()
	s := g.snap.Load() // one snapshot for the whole request
	body, err := requestBody(c, s.cfg.MaxBodyBytes)
	if err != nil {
		return writeError(c, err)
	}
	req, err := parseRequest(body, chat, s.cfg.MaxJSONDepth)
	if err != nil {
		return writeError(c, err)
	}
	rt, ok := s.models[req.Model]
	if !ok {
		return writeError(c, unknownModel(req.Model))
	}
	var dec router.Decision
	if rt.auto {
		if dec, err = s.policy.Route(req.Model, c.Get(headerTier), &req.Input); err != nil {
			return writeError(c, s.badTierHeader(err))
		}
	} else {
		dec.Tier = rt.tier
	}
	reason := dec.Reason
	if reason == "" {
		reason = "false"
	}
	span := trace.SpanFromContext(c.UserContext()) // the server span (telemetry.go)
	routed(s, span, req, &dec)
	captureInput(s, span, req)

	path := "/completions"
	if chat {
		path = "/chat/completions"
	}
	clientWantsUsage := req.IncludeUsage
	up := &backends.Request{Path: path, Header: http.Header{headerRequestID: {c.Locals(headerRequestID).(string)}},
		Body: upstreamBody(body, req.Stream && !req.IncludeUsage)}

	ctx, cancel := context.WithTimeout(c.UserContext(), s.cfg.Timeouts.Total)
	watch := watchClient(c, cancel) // a client hanging up cancels ctx (disconnect.go)
	var resp *backends.Response
	tier := dec.Tier
	for i, t := range s.tryOrder(dec.Tier) {
		resp, err = s.pools[t].Send(ctx, g.registry.Client(), up, s.cfg.Retries)
		if err == nil {
			tier = t
			if i > 0 {
				reason = "fallback"
			}
			break
		}
		if !errors.Is(err, backends.ErrUnavailable) && !errors.Is(err, backends.ErrTimeout) {
			break
		}
	}
	rec := costing.Record{
		Time: start, RequestID: up.Header.Get(headerRequestID), Tier: tier, Stream: req.Stream,
		Escalated: reason != "false", Reason: reasonOrEmpty(reason), Score: dec.Score,
		KeyID: keyID(c.Get(fiber.HeaderAuthorization)),
	}
	rec.TraceID = traceID(span)
	if err != nil {
		gone := watch.stop()
		cancel()
		rec.Latency = g.now().Sub(start)
		rec.Status = costing.StatusUpstreamError
		if errors.Is(err, backends.ErrTimeout) {
			rec.Status = costing.StatusTimeout
		}
		if gone {
			rec.Status = costing.StatusClientCancelled
		}
		g.finish(s, span, &rec, false)
		return writeError(c, err)
	}
	rec.Model, rec.Endpoint = resp.Endpoint.Model, resp.Endpoint.URL

	c.Set(headerTier, tier)
	c.Set(headerModel, resp.Endpoint.Model)
	c.Set(headerScore, strconv.FormatFloat(dec.Score, 'f', 4, 64))
	c.Set(headerEscalated, reason)
	if s.cheaper(tier, dec.Tier) {
		c.Set(headerDegraded, "true")
	}
	promptChars := 0
	for _, m := range req.Messages {
		promptChars += len(m.Content)
	}

	if !req.Stream {
		data, rerr := readBody(resp)
		if watch.stop() && rerr != nil {
			rerr = context.Canceled // the client left: not the backend's failure
		}
		var u backends.Usage
		if rerr == nil {
			u = backends.ParseUsage(data)
			resp.RecordUsage(u)
		}
		resp.Finish(rerr)
		cancel()
		rec.Latency = g.now().Sub(start)
		rec.TTFT = rec.Latency
		if rerr != nil {
			rec.Status = costing.StatusUpstreamError
			if errors.Is(rerr, context.Canceled) {
				rec.Status = costing.StatusClientCancelled
			}
			// The prompt was processed; what was generated is unknown.
			setTokens(&rec, backends.Usage{}, promptChars, 0)
			g.finish(s, span, &rec, false)
			return writeError(c, &apiError{Status: 502, Type: "upstream_error", Code: "upstream_broken",
				Message: "the model backend's answer broke off: " + rerr.Error()})
		}
		outChars := 0 // only needed to estimate when usage is missing
		if !u.Reported {
			outChars = len(jsonString(data, "choices.0.message.content")) + len(jsonString(data, "choices.0.text"))
		}
		setTokens(&rec, u, promptChars, outChars)
		g.finish(s, span, &rec, false)
		captureOutput(s, span, data, u.FinishReason)
		c.Status(resp.StatusCode)
		c.Set(fiber.HeaderContentType, resp.Header.Get(fiber.HeaderContentType))
		return c.Send(data)
	}

	if watch.stop() { // the client left before the first chunk
		resp.Finish(context.Canceled)
		cancel()
		rec.Latency, rec.Status = g.now().Sub(start), costing.StatusClientCancelled
		setTokens(&rec, backends.Usage{}, promptChars, 0)
		g.finish(s, span, &rec, false)
		return nil
	}
	c.Status(http.StatusOK)
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set("X-Accel-Buffering", "no")
	idle := s.cfg.Timeouts.StreamIdle
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		g.relay(ctx, cancel, resp, w, relayState{snap: s, span: span, capture: newCapture(s, span), rec: rec, start: start, idle: idle,
			promptChars: promptChars, keepUsage: clientWantsUsage})
	})
	return nil
}

// unknownModel is the 404 for a model name that is no alias, tier or
// upstream model.
func unknownModel(name string) *apiError {
	return &apiError{Status: 404, Type: "invalid_request_error", Code: "model_not_found", Param: "model",
		Message: "The model '" + name + "' does not exist. Use \"auto\", an alias, a tier or a model listed by GET /v1/models."}
}

// badTierHeader is the 400 for an X-Cascade-Tier header that names no tier.
func (s *snapshot) badTierHeader(err error) *apiError {
	return badRequest(headerTier, "header %s: %v; use one of %s", headerTier, err, strings.Join(s.tiers, ", "))
}

func reasonOrEmpty(r string) string {
	if r == "false" {
		return ""
	}
	return r
}

// readBody reads a non-streaming answer whole, in one allocation when the
// backend sent its length.
func readBody(resp *backends.Response) ([]byte, error) {
	if n := resp.ContentLength; n >= 0 && n <= maxResponseBytes {
		b := make([]byte, n)
		_, err := io.ReadFull(resp.Body, b)
		return b, err
	}
	return io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
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

// setTokens fills token counts from usage, or estimates them (4 bytes a token)
// when the backend reported none.
func setTokens(rec *costing.Record, u backends.Usage, promptChars, outChars int) {
	if u.Reported {
		rec.InputTokens, rec.OutputTokens = u.InputTokens, u.OutputTokens
		return
	}
	rec.Estimated = true
	rec.InputTokens = (promptChars + 3) / 4
	rec.OutputTokens = (outChars + 3) / 4
}

type relayState struct {
	snap        *snapshot
	span        trace.Span       // the server span, ended when the stream is
	capture     *strings.Builder // the streamed answer, when content capture is on (telemetry.go)
	rec         costing.Record
	start       time.Time
	idle        time.Duration
	promptChars int
	keepUsage   bool
}

// relay copies the upstream SSE stream to the client event by event. It runs
// after the handler returned, on fasthttp's stream writer.
func (g *Gateway) relay(ctx context.Context, cancel context.CancelFunc, resp *backends.Response, w *bufio.Writer, st relayState) {
	defer cancel()
	var idleFired atomic.Bool
	idle := time.AfterFunc(st.idle, func() { idleFired.Store(true); cancel() })
	defer idle.Stop()
	sc := backends.NewStreamScanner(resp.Body)
	rec := st.rec
	rec.Status = costing.StatusOK
	var outcome error
	first := true
	for {
		line, err := sc.Next()
		if len(line) > 0 {
			if st.capture != nil {
				captureChunk(st.capture, line)
			}
			idle.Reset(st.idle)
			if first {
				rec.TTFT = g.now().Sub(st.start)
				first = false
			}
			if st.keepUsage || !sc.UsageOnly {
				w.Write(line)
			}
			// At the end of an event, flush unless more has already arrived.
			if (line[0] == '\n' || line[0] == '\r') && !sc.LineReady() {
				if ferr := w.Flush(); ferr != nil {
					rec.Status = costing.StatusClientCancelled
					outcome = context.Canceled
					cancel() // stop the GPU working for nobody
					break
				}
			}
		}
		if err == nil {
			continue
		}
		if err == io.EOF && sc.Done {
			break
		}
		// The upstream broke off mid-stream: tell the client instead of
		// ending a 200 that looks complete.
		msg := "the model backend's stream broke off before it finished"
		rec.Status, outcome = costing.StatusUpstreamError, errStreamBroken
		if idleFired.Load() {
			msg = "the model backend sent nothing for longer than timeouts.stream_idle"
			rec.Status, outcome = costing.StatusTimeout, backends.ErrTimeout
		} else if ctx.Err() != nil {
			msg = "the request exceeded timeouts.total"
			rec.Status, outcome = costing.StatusTimeout, backends.ErrTimeout
		}
		w.WriteString("data: ")
		w.Write(errorBody(&apiError{Type: "upstream_error", Code: "stream_interrupted", Message: msg}))
		w.WriteString("\n\n")
		w.Flush()
		break
	}
	if st.capture != nil {
		captureText(st.span, st.capture.String(), sc.Usage.FinishReason)
	}
	resp.RecordUsage(sc.Usage)
	resp.Finish(outcome)
	rec.Latency = g.now().Sub(st.start)
	setTokens(&rec, sc.Usage, st.promptChars, sc.Chunks*4)
	g.finish(st.snap, st.span, &rec, true)
}

var errStreamBroken = errors.New("upstream stream broke off")
