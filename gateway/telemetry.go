package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/cascade-gateway/cascade/backends"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/router"
)

// Attribute keys for Cascade's own facts, on the server span and metrics.
const (
	keyTier        = backends.CascadeTierKey
	keyScore       = attribute.Key("cascade.score")
	keyThreshold   = attribute.Key("cascade.threshold")
	keyEscalated   = attribute.Key("cascade.escalated")
	keyReason      = attribute.Key("cascade.reason")
	keyOutcome     = attribute.Key("cascade.outcome")
	keyMove        = attribute.Key("cascade.fallback")
	keyCostUSD     = attribute.Key("cascade.cost_usd")
	keyBaselineUSD = attribute.Key("cascade.baseline_cost_usd")
	keyEnergyWh    = attribute.Key("cascade.energy_wh")
	keyRequestID   = attribute.Key("cascade.request_id")
	keyEstimated   = attribute.Key("cascade.tokens_estimated")
	keyVerifier    = attribute.Key("cascade.verifier_score")
	keyHoldMS      = attribute.Key("cascade.hold_ms")
	keyWastedUSD   = attribute.Key("cascade.wasted_cost_usd")
	keyDiscarded   = attribute.Key("cascade.discarded_model")
)

// telemetry holds the gateway's tracer and instruments; created once in New.
type telemetry struct {
	tracer trace.Tracer

	requests    metric.Int64Counter
	escalations metric.Int64Counter
	fallbacks   metric.Int64Counter
	cost        metric.Float64Counter
	baseline    metric.Float64Counter
	energy      metric.Float64Counter
	ttfc        metric.Float64Histogram
	reg         metric.Registration
}

// prop is the propagator for incoming and outgoing trace context: the otel
// global, as installed by the program (cmd/cascade sets TraceContext+Baggage).
func prop() propagation.TextMapPropagator { return otel.GetTextMapPropagator() }

// newTelemetry creates the instruments on the providers of opts (otel's
// globals when nil) and hands the tracer to the upstream client.
func newTelemetry(g *Gateway) (*telemetry, error) {
	tp, mp := g.opts.TracerProvider, g.opts.MeterProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if err := g.registry.Client().SetTelemetry(tp, mp, prop()); err != nil {
		return nil, err
	}
	t := &telemetry{tracer: tp.Tracer(backends.ScopeName)}
	m := mp.Meter(backends.ScopeName)
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	var err error
	t.requests, err = m.Int64Counter("cascade.requests", metric.WithUnit("{request}"),
		metric.WithDescription("API requests, by tier, outcome and whether the router escalated them."))
	add(err)
	t.escalations, err = m.Int64Counter("cascade.escalations", metric.WithUnit("{request}"),
		metric.WithDescription("Requests the router sent above the cheapest tier, by reason (score, alias, header, confidence)."))
	add(err)
	t.fallbacks, err = m.Int64Counter("cascade.fallbacks", metric.WithUnit("{request}"),
		metric.WithDescription("Requests moved to another tier than the router chose because it had no endpoint available, by direction (up, down) and the tier that took them."))
	add(err)
	t.cost, err = m.Float64Counter("cascade.cost", metric.WithUnit("USD"),
		metric.WithDescription("What requests cost, in US dollars."))
	add(err)
	t.baseline, err = m.Float64Counter("cascade.baseline_cost", metric.WithUnit("USD"),
		metric.WithDescription("What requests would have cost on the largest tier, in US dollars."))
	add(err)
	t.energy, err = m.Float64Counter("cascade.energy", metric.WithUnit("Wh"),
		metric.WithDescription("Energy requests used, in watt-hours."))
	add(err)
	t.ttfc, err = m.Float64Histogram("gen_ai.client.operation.time_to_first_chunk", metric.WithUnit("s"),
		metric.WithDescription("Time to the first chunk of a streamed answer."),
		metric.WithExplicitBucketBoundaries(backends.DurationBuckets...))
	add(err)

	breaker, err := m.Int64ObservableGauge("cascade.breaker.state", metric.WithUnit("1"),
		metric.WithDescription("Circuit breaker state per endpoint: 0 closed, 1 half-open, 2 open."))
	add(err)
	queue, err := m.Int64ObservableGauge("cascade.backend.queue_depth", metric.WithUnit("{request}"),
		metric.WithDescription("Requests waiting on the endpoint, as it last reported."))
	add(err)
	threshold, err := m.Float64ObservableGauge("cascade.routing.threshold", metric.WithUnit("1"),
		metric.WithDescription("The score at or above which auto requests escalate."))
	add(err)
	target, err := m.Float64ObservableGauge("cascade.routing.target_escalation_rate", metric.WithUnit("1"),
		metric.WithDescription("The configured target share of escalated requests (0 when the threshold is fixed)."))
	add(err)
	insts := []metric.Observable{breaker, queue, threshold, target}
	recGauges, err := newRecorderGauges(m, g.opts.Recorder)
	add(err)
	if recGauges != nil {
		insts = append(insts, recGauges.insts...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	t.reg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := g.snap.Load()
		if s == nil {
			return nil
		}
		for _, tier := range s.tiers {
			for _, e := range s.pools[tier].Endpoints {
				set := metric.WithAttributeSet(s.tel.endpointSet(e))
				o.ObserveInt64(breaker, int64(e.BreakerState()), set)
				o.ObserveInt64(queue, e.Queue(), set)
			}
		}
		o.ObserveFloat64(threshold, s.policy.Threshold())
		o.ObserveFloat64(target, s.cfg.Routing.TargetEscalationRate)
		if recGauges != nil {
			recGauges.observe(o)
		}
		return nil
	}, insts...)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// telSets are attribute sets precomputed per configuration, so recording a
// request's metrics allocates nothing.
type telSets struct {
	tiers     map[string]*tierSets
	endpoints map[string]attribute.Set // by tier + "|" + URL
	capture   bool
}

type tierSets struct {
	tier     attribute.KeyValue
	only     []metric.AddOption    // {cascade.tier}
	onlyRec  []metric.RecordOption // {cascade.tier}
	requests [costing.NumOutcomes][2][]metric.AddOption
	moves    [3][]metric.AddOption         // by costing.Move
	escalate map[string][]metric.AddOption // by reason
}

var knownReasons = []string{"score", "alias", "header", "confidence"}

func newTierSets(tier string) *tierSets {
	ts := &tierSets{tier: keyTier.String(tier), escalate: map[string][]metric.AddOption{}}
	set := attribute.NewSet(ts.tier)
	ts.only = []metric.AddOption{metric.WithAttributeSet(set)}
	ts.onlyRec = []metric.RecordOption{metric.WithAttributeSet(set)}
	for st := range ts.requests {
		for esc := range ts.requests[st] {
			ts.requests[st][esc] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(ts.tier,
				keyOutcome.String(costing.Outcome(st).String()), keyEscalated.Bool(esc == 1)))}
		}
	}
	for m := range ts.moves {
		ts.moves[m] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(ts.tier,
			keyMove.String(costing.Move(m).String())))}
	}
	for _, r := range knownReasons {
		ts.escalate[r] = escalationOpts(ts.tier, r)
	}
	return ts
}

func escalationOpts(tier attribute.KeyValue, reason string) []metric.AddOption {
	return []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(tier, keyReason.String(reason)))}
}

// buildTelSets precomputes the attribute sets of cfg's tiers and endpoints.
func buildTelSets(cfg *config.Config) *telSets {
	ts := &telSets{tiers: map[string]*tierSets{}, endpoints: map[string]attribute.Set{},
		capture: cfg.Telemetry.CaptureContent}
	for _, t := range cfg.Tiers {
		ts.tiers[t.Name] = newTierSets(t.Name)
	}
	ts.tiers[""] = newTierSets("none") // requests refused before any tier was tried
	return ts
}

func (ts *telSets) tier(name string) *tierSets {
	if ts != nil {
		if t, ok := ts.tiers[name]; ok {
			return t
		}
	}
	return newTierSets(name)
}

func (ts *telSets) endpointSet(e *backends.Endpoint) attribute.Set {
	if ts != nil {
		if s, ok := ts.endpoints[e.Tier+"|"+e.URL]; ok {
			return s
		}
	}
	return endpointSet(e)
}

func endpointSet(e *backends.Endpoint) attribute.Set {
	return attribute.NewSet(keyTier.String(e.Tier), semconv.ServerAddress(hostPort(e.URL)))
}

// addEndpoints records the endpoint attribute sets of pools.
func (ts *telSets) addEndpoints(pools map[string]*backends.Pool) {
	for _, p := range pools {
		for _, e := range p.Endpoints {
			ts.endpoints[e.Tier+"|"+e.URL] = endpointSet(e)
		}
	}
}

// hostPort is the host:port of a base URL.
func hostPort(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
	}
	if i := strings.IndexByte(u, '/'); i >= 0 {
		u = u[:i]
	}
	return u
}

// record updates the per-request metrics from a finished record. It is
// called from finish, once per request that reached a backend.
func (t *telemetry) record(s *snapshot, rec *costing.Record) {
	if t == nil {
		return
	}
	ctx := context.Background()
	ts := s.tel.tier(rec.Tier)
	st := int(rec.Outcome)
	if st >= len(ts.requests) {
		st = int(costing.OutcomeUpstreamError)
	}
	esc := 0
	if rec.Escalated {
		esc = 1
	}
	t.requests.Add(ctx, 1, ts.requests[st][esc]...)
	if rec.Escalated {
		opts, ok := ts.escalate[rec.Reason]
		if !ok {
			opts = escalationOpts(ts.tier, rec.Reason)
		}
		t.escalations.Add(ctx, 1, opts...)
	}
	if rec.Move != costing.MoveNone && int(rec.Move) < len(ts.moves) {
		t.fallbacks.Add(ctx, 1, ts.moves[rec.Move]...)
	}
	t.cost.Add(ctx, float64(rec.CostMicroUSD)/1e6, ts.only...)
	t.baseline.Add(ctx, float64(rec.BaselineMicroUSD)/1e6, ts.only...)
	t.energy.Add(ctx, float64(rec.EnergyMilliWh)/1e3, ts.only...)
	if rec.Stream && rec.TTFT > 0 {
		t.ttfc.Record(ctx, rec.TTFT.Seconds(), ts.onlyRec...)
	}
}

// headerCarrier reads trace context from a fasthttp request header.
type headerCarrier struct{ h *fasthttp.RequestHeader }

func (c headerCarrier) Get(key string) string {
	if v := c.h.Peek(key); len(v) > 0 {
		return string(v)
	}
	return ""
}

func (c headerCarrier) Set(key, value string) { c.h.Set(key, value) }

func (c headerCarrier) Keys() []string {
	var keys []string
	c.h.VisitAll(func(k, _ []byte) { keys = append(keys, string(k)) })
	return keys
}

// serverRoutes are the routes that get a server span, with precomputed
// names and attributes.
var serverRoutes = map[string]struct {
	name  string
	attrs []attribute.KeyValue
}{}

func init() {
	for _, r := range []struct{ method, path string }{
		{"POST", "/v1/chat/completions"}, {"POST", "/v1/completions"}, {"GET", "/v1/models"},
	} {
		serverRoutes[r.method+" "+r.path] = struct {
			name  string
			attrs []attribute.KeyValue
		}{r.method + " " + r.path, []attribute.KeyValue{
			semconv.HTTPRequestMethodKey.String(r.method), semconv.HTTPRoute(r.path), semconv.URLPath(r.path),
			semconv.URLScheme("http"),
		}}
	}
}

// tracing opens the server span of an API request, continuing the trace
// context the client sent. The span ends when the answer is complete: here
// for plain answers, at the end of the relay for streams.
func (g *Gateway) tracing(c *fiber.Ctx) error {
	route, ok := serverRoutes[c.Method()+" "+c.Path()]
	if !ok {
		return c.Next()
	}
	ctx := prop().Extract(context.Background(), headerCarrier{&c.Request().Header})
	ctx, span := g.tel.tracer.Start(ctx, route.name, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(route.attrs...))
	if span.IsRecording() {
		span.SetAttributes(semconv.ClientAddress(c.IP()))
	}
	c.SetUserContext(ctx)
	err := c.Next()
	if c.Response().IsBodyStream() {
		return err // the relay ends the span
	}
	status := c.Response().StatusCode()
	var fe *fiber.Error
	if err != nil {
		status = fiber.StatusInternalServerError
		if errors.As(err, &fe) {
			status = fe.Code
		}
	}
	endServerSpan(span, status)
	return err
}

func endServerSpan(span trace.Span, status int) {
	if span.IsRecording() {
		span.SetAttributes(semconv.HTTPResponseStatusCode(status))
		if status >= 500 {
			span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(status)))
			span.SetStatus(codes.Error, "")
		}
	}
	span.End()
}

// routed puts the routing decision on the server span. Score and threshold
// are there only for requests the cascade decided (model "auto" or an alias).
func routed(s *snapshot, span trace.Span, req *request, dec *router.Decision) {
	if !span.IsRecording() {
		return
	}
	op := semconv.GenAIOperationNameTextCompletion
	if req.Chat {
		op = semconv.GenAIOperationNameChat
	}
	span.SetAttributes(op, semconv.GenAIRequestModel(req.Model), semconv.GenAIRequestStream(req.Stream))
	if s.models[req.Model].auto {
		span.SetAttributes(keyScore.Float64(dec.Score), keyThreshold.Float64(dec.Threshold))
	}
}

// traceID is the trace id of span, or "" when there is none.
func traceID(span trace.Span) string {
	sc := span.SpanContext()
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}

// annotate puts a finished record's facts on the server span. For streams
// (ended true) it also ends the span, which the middleware left open.
func annotate(span trace.Span, rec *costing.Record, ended bool) {
	if span.IsRecording() {
		span.SetAttributes(
			keyTier.String(rec.Tier),
			keyEscalated.Bool(rec.Escalated),
			keyReason.String(rec.Reason),
			keyOutcome.String(rec.Outcome.String()),
			keyCostUSD.Float64(float64(rec.CostMicroUSD)/1e6),
			keyBaselineUSD.Float64(float64(rec.BaselineMicroUSD)/1e6),
			keyEnergyWh.Float64(float64(rec.EnergyMilliWh)/1e3),
			keyRequestID.String(rec.RequestID),
			semconv.GenAIUsageInputTokens(rec.InputTokens),
			semconv.GenAIUsageOutputTokens(rec.OutputTokens),
			keyEstimated.Bool(rec.Estimated),
		)
		if rec.Model != "" {
			span.SetAttributes(semconv.GenAIResponseModel(rec.Model))
		}
		if rec.Move != costing.MoveNone {
			span.SetAttributes(keyMove.String(rec.Move.String()))
		}
		if rec.Cascaded {
			span.SetAttributes(keyVerifier.Float64(rec.Verifier), keyHoldMS.Float64(float64(rec.Hold)/1e6))
		}
		if rec.Discarded.Tier != "" {
			span.SetAttributes(keyDiscarded.String(rec.Discarded.Model), keyWastedUSD.Float64(float64(rec.WastedMicroUSD)/1e6))
		}
		if !rec.Outcome.OK() {
			span.SetAttributes(semconv.ErrorTypeKey.String(rec.Outcome.String()))
			if rec.Outcome.Failed() {
				span.SetStatus(codes.Error, rec.Outcome.String())
			}
		}
	}
	if ended {
		endServerSpan(span, fiber.StatusOK)
	}
}

// GenAI message shapes for gen_ai.input.messages / gen_ai.output.messages.
type genaiPart struct {
	Type    string `json:"type"`
	Content string `json:"content"`
}

type genaiMessage struct {
	Role         string      `json:"role"`
	Parts        []genaiPart `json:"parts"`
	FinishReason string      `json:"finish_reason,omitempty"`
}

// captureInput records the prompt on span when content capture is on.
func captureInput(s *snapshot, span trace.Span, req *request) {
	if !s.tel.captureOn() || !span.IsRecording() {
		return
	}
	msgs := make([]genaiMessage, 0, len(req.Messages))
	for _, m := range req.Messages {
		role := m.Role
		if role == "" {
			role = "user"
		}
		msgs = append(msgs, genaiMessage{Role: role, Parts: []genaiPart{{Type: "text", Content: m.Content}}})
	}
	b, _ := json.Marshal(msgs)
	span.SetAttributes(semconv.GenAIInputMessagesKey.String(string(b)))
}

// captureOutput records the answer of a completion body on span when
// content capture is on.
func captureOutput(s *snapshot, span trace.Span, body []byte, finishReason string) {
	if !s.tel.captureOn() || !span.IsRecording() {
		return
	}
	captureText(span, jsonString(body, "choices.0.message.content")+jsonString(body, "choices.0.text"), finishReason)
}

// captureText records an answer as gen_ai.output.messages.
func captureText(span trace.Span, text, finishReason string) {
	b, _ := json.Marshal([]genaiMessage{{Role: "assistant", Parts: []genaiPart{{Type: "text", Content: text}}, FinishReason: finishReason}})
	span.SetAttributes(semconv.GenAIOutputMessagesKey.String(string(b)))
}

// newCapture returns the builder a stream's answer is collected in when
// content capture is on, else nil.
func newCapture(s *snapshot, span trace.Span) *strings.Builder {
	if !s.tel.captureOn() || !span.IsRecording() {
		return nil
	}
	return &strings.Builder{}
}

// captureChunk appends the text of one SSE line to b.
func captureChunk(b *strings.Builder, line []byte) {
	if !bytes.HasPrefix(line, dataPrefix) {
		return
	}
	p := bytes.TrimSpace(line[len(dataPrefix):])
	if len(p) == 0 || p[0] != '{' {
		return
	}
	r := gjson.GetManyBytes(p, "choices.0.delta.content", "choices.0.text")
	b.WriteString(r[0].String())
	b.WriteString(r[1].String())
}

var dataPrefix = []byte("data:")

func (ts *telSets) captureOn() bool { return ts != nil && ts.capture }
