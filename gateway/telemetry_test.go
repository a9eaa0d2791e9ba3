package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
)

func init() {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
}

// captured keeps the records a gateway finished.
type captured struct {
	mu   sync.Mutex
	recs []costing.Record
}

func (c *captured) Record(r costing.Record) {
	c.mu.Lock()
	c.recs = append(c.recs, r)
	c.mu.Unlock()
}

func (c *captured) all() []costing.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]costing.Record(nil), c.recs...)
}

// statsRecorder is a recorder that reports statistics.
type statsRecorder struct{ captured }

func (*statsRecorder) Stats() costing.RecorderStats {
	return costing.RecorderStats{Queued: 7, Dropped: 3, Written: 11}
}

// otelHarness is a gateway's in-memory trace exporter and manual metric reader.
type otelHarness struct {
	spans  *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader
	rec    *captured
}

func newOtelHarness(t testing.TB, opts *Options) *otelHarness {
	t.Helper()
	h := &otelHarness{spans: tracetest.NewInMemoryExporter(), reader: sdkmetric.NewManualReader(), rec: &captured{}}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(h.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	t.Cleanup(func() {
		tp.Shutdown(context.Background())
		mp.Shutdown(context.Background())
	})
	opts.TracerProvider, opts.MeterProvider = tp, mp
	if opts.Recorder == nil {
		opts.Recorder = h.rec
	}
	return h
}

// lengthConfig is testConfig with the length scorer, so that a short prompt
// stays small and a long one escalates whatever the learned model says.
func lengthConfig(t testing.TB, small, large []string) *config.Config {
	t.Helper()
	c := testConfig(t, small, large)
	c.Routing.Scorer = "length"
	return c
}

// waitSpans waits until n spans have ended (streams end theirs after the
// last byte went out) and returns them.
func (h *otelHarness) waitSpans(t testing.TB, n int) tracetest.SpanStubs {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := h.spans.GetSpans()
		if len(s) >= n {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d spans ended, want %d: %v", len(s), n, spanNames(s))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func spanNames(s tracetest.SpanStubs) []string {
	var n []string
	for _, x := range s {
		n = append(n, x.Name)
	}
	return n
}

func findSpan(t testing.TB, spans tracetest.SpanStubs, name string) tracetest.SpanStub {
	t.Helper()
	for _, s := range spans {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no span %q in %v", name, spanNames(spans))
	return tracetest.SpanStub{}
}

func attrOf(s tracetest.SpanStub, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttr(t testing.TB, s tracetest.SpanStub, key string, want any) {
	t.Helper()
	v, ok := attrOf(s, key)
	if !ok {
		t.Fatalf("span %q has no %s; has %v", s.Name, key, s.Attributes)
	}
	if got := v.AsInterface(); !equalAttr(got, want) {
		t.Fatalf("span %q: %s = %v (%T), want %v", s.Name, key, got, got, want)
	}
}

func equalAttr(got, want any) bool {
	switch w := want.(type) {
	case int:
		g, ok := got.(int64)
		return ok && g == int64(w)
	case []string:
		g, ok := got.([]string)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range g {
			if g[i] != w[i] {
				return false
			}
		}
		return true
	}
	return got == want
}

func noAttr(t testing.TB, s tracetest.SpanStub, key string) {
	t.Helper()
	if v, ok := attrOf(s, key); ok {
		t.Fatalf("span %q should not have %s, has %v", s.Name, key, v.String())
	}
}

// headerSim serves a simulator and keeps the traceparent headers it received.
type headerSim struct {
	mu      sync.Mutex
	parents []string
	url     string // the /v1 base
	host    string
	port    int
}

func newHeaderSim(t testing.TB, c sim.Config) *headerSim {
	t.Helper()
	s := sim.New(c)
	hs := &headerSim{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "completions") {
			hs.mu.Lock()
			hs.parents = append(hs.parents, r.Header.Get("traceparent"))
			hs.mu.Unlock()
		}
		s.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	u, _ := url.Parse(ts.URL)
	hs.url, hs.host = ts.URL+"/v1", u.Hostname()
	hs.port, _ = strconv.Atoi(u.Port())
	return hs
}

func (h *headerSim) traceparents() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.parents...)
}

const (
	clientTraceID = "0af7651916cd43dd8448eb211c80319c"
	clientSpanID  = "b7ad6b7169203331"
	clientParent  = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

// checkTrace asserts the server span continues the client's trace, the
// attempt span is its child, and the backend saw the attempt span as parent.
func checkTrace(t *testing.T, server, attempt tracetest.SpanStub, backend *headerSim) {
	t.Helper()
	if server.SpanKind != trace.SpanKindServer || attempt.SpanKind != trace.SpanKindClient {
		t.Fatalf("kinds: server %v, attempt %v", server.SpanKind, attempt.SpanKind)
	}
	if server.SpanContext.TraceID().String() != clientTraceID || server.Parent.SpanID().String() != clientSpanID || !server.Parent.IsRemote() {
		t.Fatalf("server span does not continue the client's trace: %v parent %v", server.SpanContext, server.Parent)
	}
	if attempt.Parent.SpanID() != server.SpanContext.SpanID() || attempt.SpanContext.TraceID() != server.SpanContext.TraceID() {
		t.Fatalf("attempt span is not the server span's child: parent %v, server %v", attempt.Parent, server.SpanContext)
	}
	tp := backend.traceparents()
	want := "00-" + clientTraceID + "-" + attempt.SpanContext.SpanID().String() + "-01"
	if len(tp) == 0 || tp[len(tp)-1] != want {
		t.Fatalf("backend saw traceparent %q, want %q", tp, want)
	}
}

func TestTraceNonStreaming(t *testing.T) {
	small := newHeaderSim(t, sim.Config{Model: "small-model"})
	large := newHeaderSim(t, sim.Config{Model: "large-model"})
	var opts Options
	h := newOtelHarness(t, &opts)
	_, base := startGateway(t, lengthConfig(t, []string{small.url}, []string{large.url}), opts)

	client := sdkClient(base)
	res, err := client.Chat.Completions.New(context.Background(), chatParams("auto", "What is 2+2?"),
		option.WithHeader("traceparent", clientParent))
	if err != nil {
		t.Fatal(err)
	}
	spans := h.waitSpans(t, 2)
	server := findSpan(t, spans, "POST /v1/chat/completions")
	attempt := findSpan(t, spans, "chat small-model")
	checkTrace(t, server, attempt, small)

	wantAttr(t, attempt, "gen_ai.operation.name", "chat")
	wantAttr(t, attempt, "gen_ai.provider.name", "openai")
	wantAttr(t, attempt, "gen_ai.request.model", "small-model")
	wantAttr(t, attempt, "gen_ai.response.model", "small-model")
	wantAttr(t, attempt, "gen_ai.usage.input_tokens", int(res.Usage.PromptTokens))
	wantAttr(t, attempt, "gen_ai.usage.output_tokens", int(res.Usage.CompletionTokens))
	wantAttr(t, attempt, "gen_ai.response.finish_reasons", []string{string(res.Choices[0].FinishReason)})
	wantAttr(t, attempt, "server.address", small.host)
	wantAttr(t, attempt, "server.port", small.port)
	wantAttr(t, attempt, "cascade.tier", "small")
	noAttr(t, attempt, "error.type")
	if attempt.Status.Code == codes.Error {
		t.Fatalf("attempt status %v", attempt.Status)
	}

	recs := h.rec.all()
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	rec := recs[0]
	if rec.TraceID != clientTraceID {
		t.Fatalf("record trace id %q, want %q", rec.TraceID, clientTraceID)
	}
	wantAttr(t, server, "http.request.method", "POST")
	wantAttr(t, server, "http.route", "/v1/chat/completions")
	wantAttr(t, server, "http.response.status_code", 200)
	wantAttr(t, server, "gen_ai.request.model", "auto")
	wantAttr(t, server, "gen_ai.response.model", "small-model")
	wantAttr(t, server, "cascade.tier", "small")
	wantAttr(t, server, "cascade.escalated", false)
	wantAttr(t, server, "cascade.reason", "")
	wantAttr(t, server, "cascade.outcome", "served")
	wantAttr(t, server, "cascade.score", rec.Score)
	wantAttr(t, server, "cascade.cost_usd", float64(rec.CostMicroUSD)/1e6)
	wantAttr(t, server, "cascade.baseline_cost_usd", float64(rec.BaselineMicroUSD)/1e6)
	wantAttr(t, server, "cascade.energy_wh", float64(rec.EnergyMilliWh)/1e3)
	wantAttr(t, server, "gen_ai.usage.output_tokens", rec.OutputTokens)
	if _, ok := attrOf(server, "cascade.threshold"); !ok {
		t.Fatal("no cascade.threshold")
	}
	// Content is not captured unless enabled.
	noAttr(t, server, "gen_ai.input.messages")
	noAttr(t, server, "gen_ai.output.messages")
}

func TestTraceStreaming(t *testing.T) {
	small := newHeaderSim(t, sim.Config{Model: "small-model"})
	large := newHeaderSim(t, sim.Config{Model: "large-model"})
	var opts Options
	h := newOtelHarness(t, &opts)
	_, base := startGateway(t, lengthConfig(t, []string{small.url}, []string{large.url}), opts)

	long := strings.Repeat("Prove that the sequence converges and derive its limit step by step. ", 80)
	p := chatParams("auto", long)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	client := sdkClient(base)
	stream := client.Chat.Completions.NewStreaming(context.Background(), p, option.WithHeader("traceparent", clientParent))
	var acc openai.ChatCompletionAccumulator
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	spans := h.waitSpans(t, 2)
	server := findSpan(t, spans, "POST /v1/chat/completions")
	attempt := findSpan(t, spans, "chat large-model")
	checkTrace(t, server, attempt, large)
	if len(small.traceparents()) != 0 {
		t.Fatal("the escalated request reached the small tier")
	}
	wantAttr(t, attempt, "gen_ai.response.model", "large-model")
	wantAttr(t, attempt, "gen_ai.usage.input_tokens", int(acc.Usage.PromptTokens))
	wantAttr(t, attempt, "gen_ai.usage.output_tokens", int(acc.Usage.CompletionTokens))
	wantAttr(t, attempt, "gen_ai.response.finish_reasons", []string{string(acc.Choices[0].FinishReason)})
	wantAttr(t, server, "cascade.tier", "large")
	wantAttr(t, server, "cascade.escalated", true)
	wantAttr(t, server, "cascade.reason", "score")
	wantAttr(t, server, "gen_ai.request.stream", true)
	wantAttr(t, server, "http.response.status_code", 200)
	if !server.EndTime.After(attempt.EndTime) && !server.EndTime.Equal(attempt.EndTime) {
		t.Fatalf("server span ended before the attempt: %v < %v", server.EndTime, attempt.EndTime)
	}

	// Time to first chunk is measured for streams only.
	rm := collect(t, h.reader)
	ttfc := histogram(t, rm, "gen_ai.client.operation.time_to_first_chunk")
	if n := histCount(ttfc, "cascade.tier=large"); n != 1 {
		t.Fatalf("time to first chunk count %d, want 1: %+v", n, ttfc)
	}
}

func TestTraceTextCompletionAndCapture(t *testing.T) {
	small := newHeaderSim(t, sim.Config{Model: "small-model"})
	var opts Options
	h := newOtelHarness(t, &opts)
	cfg := testConfig(t, []string{small.url}, []string{small.url})
	cfg.Telemetry.CaptureContent = true
	_, base := startGateway(t, cfg, opts)
	client := sdkClient(base)

	res, err := client.Completions.New(context.Background(), openai.CompletionNewParams{
		Model: "small", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
	})
	if err != nil {
		t.Fatal(err)
	}
	spans := h.waitSpans(t, 2)
	attempt := findSpan(t, spans, "text_completion small-model")
	wantAttr(t, attempt, "gen_ai.operation.name", "text_completion")
	server := findSpan(t, spans, "POST /v1/completions")
	wantAttr(t, server, "gen_ai.operation.name", "text_completion")

	in, _ := attrOf(server, "gen_ai.input.messages")
	out, _ := attrOf(server, "gen_ai.output.messages")
	var inMsgs, outMsgs []genaiMessage
	if err := json.Unmarshal([]byte(in.AsString()), &inMsgs); err != nil || len(inMsgs) != 1 || inMsgs[0].Parts[0].Content != "Once upon a time" {
		t.Fatalf("gen_ai.input.messages = %q (%v)", in.AsString(), err)
	}
	if err := json.Unmarshal([]byte(out.AsString()), &outMsgs); err != nil || len(outMsgs) != 1 ||
		outMsgs[0].Parts[0].Content != res.Choices[0].Text || outMsgs[0].Role != "assistant" || outMsgs[0].Parts[0].Content == "" {
		t.Fatalf("gen_ai.output.messages = %q (%v), answer %q", out.AsString(), err, res.Choices[0].Text)
	}

	// A streamed answer is captured whole, from its chunks.
	h.spans.Reset()
	stream := client.Chat.Completions.NewStreaming(context.Background(), chatParams("small", "Tell me a story"))
	var acc openai.ChatCompletionAccumulator
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	server = findSpan(t, h.waitSpans(t, 2), "POST /v1/chat/completions")
	in, _ = attrOf(server, "gen_ai.input.messages")
	out, _ = attrOf(server, "gen_ai.output.messages")
	inMsgs, outMsgs = nil, nil
	if err := json.Unmarshal([]byte(in.AsString()), &inMsgs); err != nil || len(inMsgs) != 1 || inMsgs[0].Role != "user" || inMsgs[0].Parts[0].Content != "Tell me a story" {
		t.Fatalf("stream gen_ai.input.messages = %q (%v)", in.AsString(), err)
	}
	want := acc.Choices[0].Message.Content
	if err := json.Unmarshal([]byte(out.AsString()), &outMsgs); err != nil || len(outMsgs) != 1 || want == "" ||
		outMsgs[0].Parts[0].Content != want || outMsgs[0].FinishReason != string(acc.Choices[0].FinishReason) {
		t.Fatalf("stream gen_ai.output.messages = %q (%v), answer %q", out.AsString(), err, want)
	}
}

func TestTraceFailedAttemptAndFallback(t *testing.T) {
	small := newHeaderSim(t, sim.Config{Model: "small-model", ErrorRate: 1, ErrorStatus: 503})
	large := newHeaderSim(t, sim.Config{Model: "large-model"})
	var opts Options
	h := newOtelHarness(t, &opts)
	cfg := testConfig(t, []string{small.url}, []string{large.url})
	cfg.Retries = 0
	_, base := startGateway(t, cfg, opts)

	client := sdkClient(base)
	if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi")); err != nil {
		t.Fatal(err)
	}
	spans := h.waitSpans(t, 3)
	failed := findSpan(t, spans, "chat small-model")
	wantAttr(t, failed, "error.type", "503")
	if failed.Status.Code != codes.Error {
		t.Fatalf("failed attempt status %v", failed.Status)
	}
	ok := findSpan(t, spans, "chat large-model")
	noAttr(t, ok, "error.type")
	server := findSpan(t, spans, "POST /v1/chat/completions")
	if failed.Parent.SpanID() != server.SpanContext.SpanID() || ok.Parent.SpanID() != server.SpanContext.SpanID() {
		t.Fatal("attempts are not children of the server span")
	}
	wantAttr(t, server, "cascade.fallback", "up")
	wantAttr(t, server, "cascade.escalated", false)
	wantAttr(t, server, "cascade.tier", "large")
	noAttr(t, server, "cascade.score") // pinned: no routing decision
	noAttr(t, server, "cascade.threshold")

	rm := collect(t, h.reader)
	dur := histogram(t, rm, "gen_ai.client.operation.duration")
	if n := histCount(dur, "error.type=503", "gen_ai.request.model=small-model", "cascade.tier=small"); n != 1 {
		t.Fatalf("failed attempt duration count %d: %+v", n, dur)
	}
	if n := histCount(dur, "gen_ai.response.model=large-model", "gen_ai.operation.name=chat"); n != 1 {
		t.Fatalf("successful attempt duration count %d", n)
	}
	if _, ok := findMetric(rm, "cascade.escalations"); ok {
		t.Fatal("a fallback counted as an escalation")
	}
	if fb := sumOf(t, rm, "cascade.fallbacks"); fb["cascade.fallback=up,cascade.tier=large"] != 1 {
		t.Fatalf("fallbacks %v", fb)
	}
}

func TestTraceUpstreamDownEndsServerSpanWithError(t *testing.T) {
	small := newHeaderSim(t, sim.Config{Model: "small-model", ErrorRate: 1, ErrorStatus: 503})
	var opts Options
	h := newOtelHarness(t, &opts)
	cfg := testConfig(t, []string{small.url}, []string{small.url})
	cfg.Retries = 0
	_, base := startGateway(t, cfg, opts)
	client := sdkClient(base)
	if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi")); err == nil {
		t.Fatal("want an error")
	}
	spans := h.waitSpans(t, 2)
	server := findSpan(t, spans, "POST /v1/chat/completions")
	wantAttr(t, server, "http.response.status_code", 503)
	wantAttr(t, server, "cascade.outcome", "upstream_error")
	if server.Status.Code != codes.Error {
		t.Fatalf("server span status %v", server.Status)
	}
	recs := h.rec.all()
	if len(recs) != 1 || recs[0].TraceID != server.SpanContext.TraceID().String() {
		t.Fatalf("records %+v", recs)
	}
}

func TestMetricsPerRequest(t *testing.T) {
	small := newHeaderSim(t, sim.Config{Model: "small-model"})
	large := newHeaderSim(t, sim.Config{Model: "large-model"})
	opts := Options{Recorder: &statsRecorder{}}
	h := newOtelHarness(t, &opts)
	_, base := startGateway(t, lengthConfig(t, []string{small.url}, []string{large.url}), opts)
	client := sdkClient(base)
	var in, out int64
	for range 3 {
		res, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hello there"))
		if err != nil {
			t.Fatal(err)
		}
		in += res.Usage.PromptTokens
		out += res.Usage.CompletionTokens
	}
	recs := opts.Recorder.(*statsRecorder).all()
	rm := collect(t, h.reader)

	req := sumOf(t, rm, "cascade.requests")
	if req["cascade.escalated=false,cascade.outcome=served,cascade.tier=small"] != 3 {
		t.Fatalf("cascade.requests %v", req)
	}
	var cost, base0, energy float64
	for _, r := range recs {
		cost += float64(r.CostMicroUSD) / 1e6
		base0 += float64(r.BaselineMicroUSD) / 1e6
		energy += float64(r.EnergyMilliWh) / 1e3
	}
	for name, want := range map[string]float64{"cascade.cost": cost, "cascade.baseline_cost": base0, "cascade.energy": energy} {
		if got := sumOf(t, rm, name)["cascade.tier=small"]; abs(got-want) > 1e-9 {
			t.Fatalf("%s = %v, want %v", name, got, want)
		}
	}
	tok := histogram(t, rm, "gen_ai.client.token.usage")
	if got := histSum(tok, "gen_ai.token.type=input", "gen_ai.response.model=small-model", "cascade.tier=small"); got != float64(in) {
		t.Fatalf("input tokens %v, want %d", got, in)
	}
	if got := histSum(tok, "gen_ai.token.type=output"); got != float64(out) {
		t.Fatalf("output tokens %v, want %d", got, out)
	}
	dur := histogram(t, rm, "gen_ai.client.operation.duration")
	if n := histCount(dur, "gen_ai.operation.name=chat", "gen_ai.request.model=small-model", "gen_ai.response.model=small-model", "cascade.tier=small"); n != 3 {
		t.Fatalf("duration count %d", n)
	}
	for _, p := range dur {
		if b := p.bounds; len(b) != 14 || b[0] != 0.01 || b[13] != 81.92 {
			t.Fatalf("duration buckets %v", b)
		}
	}
	// Streams only: no time to first chunk for plain answers.
	if ttfc := histogram(t, rm, "gen_ai.client.operation.time_to_first_chunk"); len(ttfc) != 0 {
		t.Fatalf("time to first chunk recorded for a non-stream: %+v", ttfc)
	}

	gauges := gaugeOf(t, rm, "cascade.breaker.state")
	addr := "cascade.tier=small,server.address=" + small.host + ":" + strconv.Itoa(small.port)
	if v, ok := gauges[addr]; !ok || v != 0 {
		t.Fatalf("breaker gauges %v, want %s = 0", gauges, addr)
	}
	if _, ok := gaugeOf(t, rm, "cascade.backend.queue_depth")[addr]; !ok {
		t.Fatal("no backend queue depth")
	}
	if g := gaugeOf(t, rm, "cascade.routing.threshold"); g[""] <= 0 {
		t.Fatalf("threshold gauge %v", g)
	}
	if g := gaugeOf(t, rm, "cascade.recorder.queue_depth"); g[""] != 7 {
		t.Fatalf("recorder queue depth %v", g)
	}
	if g := sumOf(t, rm, "cascade.recorder.dropped"); g[""] != 3 {
		t.Fatalf("recorder dropped %v", g)
	}
}

func TestBreakerStateGaugeOpens(t *testing.T) {
	small := newHeaderSim(t, sim.Config{Model: "small-model", ErrorRate: 1, ErrorStatus: 503})
	large := newHeaderSim(t, sim.Config{Model: "large-model"})
	var opts Options
	h := newOtelHarness(t, &opts)
	cfg := testConfig(t, []string{small.url}, []string{large.url})
	cfg.Breaker.OpenFor = time.Minute
	_, base := startGateway(t, cfg, opts)
	client := sdkClient(base)
	for range cfg.Breaker.ConsecutiveFailures {
		client.Chat.Completions.New(context.Background(), chatParams("small", "hi"))
	}
	g := gaugeOf(t, collect(t, h.reader), "cascade.breaker.state")
	if v := g["cascade.tier=small,server.address="+small.host+":"+strconv.Itoa(small.port)]; v != 2 {
		t.Fatalf("breaker gauges %v, want the small endpoint open (2)", g)
	}
}

func TestPrometheusMetricsEndpoint(t *testing.T) {
	small := newHeaderSim(t, sim.Config{Model: "small-model"})
	large := newHeaderSim(t, sim.Config{Model: "large-model"})
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutUnits())
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	opts := Options{MeterProvider: mp, Recorder: &statsRecorder{},
		Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})}
	_, base := startGateway(t, lengthConfig(t, []string{small.url}, []string{large.url}), opts)
	client := sdkClient(base)
	long := strings.Repeat("Prove that the sequence converges and derive its limit step by step. ", 80)
	if _, err := client.Chat.Completions.New(context.Background(), chatParams("auto", long)); err != nil {
		t.Fatal(err)
	}
	stream := client.Chat.Completions.NewStreaming(context.Background(), chatParams("small", "hi"))
	for stream.Next() {
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	// The stream's record is finished after its last byte went out.
	var text string
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET /metrics: %d %s", resp.StatusCode, b)
		}
		text = string(b)
		if strings.Contains(text, `cascade_tier="small"`) && strings.Contains(text, "gen_ai_client_operation_time_to_first_chunk_count") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream's metrics never appeared:\n%s", text)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{
		"gen_ai_client_operation_duration_bucket{",
		"gen_ai_client_token_usage_bucket{",
		"gen_ai_client_operation_time_to_first_chunk_bucket{",
		"cascade_requests_total{",
		"cascade_escalations_total{",
		"cascade_cost_total{",
		"cascade_baseline_cost_total{",
		"cascade_energy_total{",
		"cascade_recorder_queue_depth{",
		"cascade_recorder_dropped_total{",
		"cascade_breaker_state{",
		"cascade_backend_queue_depth{",
		"cascade_routing_threshold{",
		"cascade_routing_target_escalation_rate{",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "cascade_requests_total{") {
			for _, l := range []string{"cascade_tier=", "cascade_outcome=", "cascade_escalated="} {
				if !strings.Contains(line, l) {
					t.Errorf("%s lacks label %s", line, l)
				}
			}
		}
		if strings.HasPrefix(line, "gen_ai_client_operation_duration_bucket{") {
			for _, l := range []string{"gen_ai_operation_name=", "gen_ai_request_model=", "gen_ai_response_model=", "cascade_tier="} {
				if !strings.Contains(line, l) {
					t.Errorf("%s lacks label %s", line, l)
				}
			}
		}
		if strings.HasPrefix(line, "cascade_escalations_total{") && !strings.Contains(line, `cascade_reason="score"`) {
			t.Errorf("escalation without reason: %s", line)
		}
	}
}

func TestNoMetricsRouteWithoutHandler(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("GET /metrics without an exporter: %d", resp.StatusCode)
	}
}

// ---- metric helpers ----

func collect(t testing.TB, r *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// setKey renders an attribute set as "k=v,k=v" in key order.
func setKey(s attribute.Set) string {
	var parts []string
	for _, kv := range s.ToSlice() {
		parts = append(parts, string(kv.Key)+"="+kv.Value.String())
	}
	return strings.Join(parts, ",")
}

type histPoint struct {
	attrs  string
	count  uint64
	sum    float64
	bounds []float64
}

func histogram(t testing.TB, rm metricdata.ResourceMetrics, name string) []histPoint {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		return nil
	}
	var out []histPoint
	switch d := m.Data.(type) {
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			out = append(out, histPoint{setKey(p.Attributes), p.Count, p.Sum, p.Bounds})
		}
	case metricdata.Histogram[int64]:
		for _, p := range d.DataPoints {
			out = append(out, histPoint{setKey(p.Attributes), p.Count, float64(p.Sum), p.Bounds})
		}
	default:
		t.Fatalf("%s is %T", name, m.Data)
	}
	return out
}

func matches(attrs string, want []string) bool {
	for _, w := range want {
		if !strings.Contains(","+attrs+",", ","+w+",") {
			return false
		}
	}
	return true
}

func histCount(h []histPoint, want ...string) uint64 {
	var n uint64
	for _, p := range h {
		if matches(p.attrs, want) {
			n += p.count
		}
	}
	return n
}

func histSum(h []histPoint, want ...string) float64 {
	var s float64
	for _, p := range h {
		if matches(p.attrs, want) {
			s += p.sum
		}
	}
	return s
}

func sumOf(t testing.TB, rm metricdata.ResourceMetrics, name string) map[string]float64 {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	out := map[string]float64{}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out[setKey(p.Attributes)] += float64(p.Value)
		}
	case metricdata.Sum[float64]:
		for _, p := range d.DataPoints {
			out[setKey(p.Attributes)] += p.Value
		}
	default:
		t.Fatalf("%s is %T", name, m.Data)
	}
	return out
}

func gaugeOf(t testing.TB, rm metricdata.ResourceMetrics, name string) map[string]float64 {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	out := map[string]float64{}
	switch d := m.Data.(type) {
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			out[setKey(p.Attributes)] = float64(p.Value)
		}
	case metricdata.Gauge[float64]:
		for _, p := range d.DataPoints {
			out[setKey(p.Attributes)] = p.Value
		}
	default:
		t.Fatalf("%s is %T", name, m.Data)
	}
	return out
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
