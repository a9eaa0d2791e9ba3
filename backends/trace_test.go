package backends

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/cascade-gateway/cascade/config"
)

func spanAttr(s tracetest.SpanStub, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// TestAttemptSpans sends through a pool whose first endpoint refuses
// connections: the failed attempt and the retry each get a client span, the
// retry's trace context reaches the upstream, and Finish ends the span.
func TestAttemptSpans(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("traceparent"))
		mu.Unlock()
		w.Write([]byte(`{"model":"m","choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":5}}`))
	}))
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/v1"
	ln.Close() // nothing listens there now

	cfg := config.Default()
	cfg.Tiers = []config.Tier{{Name: "s", Endpoints: []config.Endpoint{
		{URL: dead, Model: "m", Weight: 1000}, {URL: srv.URL + "/v1", Model: "m", Weight: 1}}}}
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	client := NewClient(cfg.Timeouts)
	defer client.CloseIdle()
	if err := client.SetTelemetry(tp, mp, propagation.TraceContext{}); err != nil {
		t.Fatal(err)
	}
	pool := NewRegistry(client).Pools(&cfg)["s"]
	ctx, parent := tp.Tracer("test").Start(context.Background(), "parent")

	var resp *Response
	for range 20 { // P2C may pick the live endpoint first; we want a failed try before it
		exp.Reset()
		resp, err = pool.Send(ctx, client, &Request{Path: "/completions", Body: func(*Endpoint) []byte { return []byte(`{}`) }}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Attempts == 2 {
			break
		}
		resp.Finish(nil)
	}
	if resp.Attempts != 2 {
		t.Fatal("the balancer never tried the heavily weighted dead endpoint first")
	}
	resp.RecordUsage(ParseUsage([]byte(`{"model":"m","choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":5}}`)))
	resp.Finish(context.Canceled)
	parent.End()

	var failed, ok tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.Name != "text_completion m" {
			continue
		}
		if v, _ := spanAttr(s, "error.type"); v.AsString() == "connection_error" {
			failed = s
		} else {
			ok = s
		}
	}
	if failed.Name == "" || ok.Name == "" {
		t.Fatalf("spans %v", exp.GetSpans())
	}
	if failed.Status.Code != codes.Error || failed.SpanKind != trace.SpanKindClient {
		t.Fatalf("failed attempt: status %v kind %v", failed.Status, failed.SpanKind)
	}
	// The client went away: marked, but not an error of the backend's.
	if v, _ := spanAttr(ok, "error.type"); v.AsString() != "cancelled" || ok.Status.Code == codes.Error {
		t.Fatalf("cancelled attempt: error.type %q status %v", v.AsString(), ok.Status)
	}
	for _, s := range []tracetest.SpanStub{failed, ok} {
		if s.Parent.SpanID() != parent.SpanContext().SpanID() {
			t.Fatalf("%s is not a child of the caller's span", s.Name)
		}
	}
	if v, _ := spanAttr(ok, "gen_ai.usage.output_tokens"); v.AsInt64() != 5 {
		t.Fatalf("output tokens %v", v)
	}
	mu.Lock()
	last := got[len(got)-1]
	mu.Unlock()
	if want := "00-" + ok.SpanContext.TraceID().String() + "-" + ok.SpanContext.SpanID().String() + "-01"; last != want {
		t.Fatalf("upstream saw traceparent %q, want %q", last, want)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	errTypes := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "gen_ai.client.operation.duration" {
				continue
			}
			for _, p := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				v, _ := p.Attributes.Value("error.type")
				errTypes[v.AsString()] += p.Count
			}
		}
	}
	if errTypes["connection_error"] < 1 || errTypes["cancelled"] != 1 {
		t.Fatalf("duration by error.type %v", errTypes)
	}
}

func TestErrorType(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&UpstreamError{Status: 503}, "503"},
		{context.Canceled, "cancelled"},
		{ErrTimeout, "timeout"},
		{context.DeadlineExceeded, "timeout"},
		{&net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host"}}, "connection_error"},
		{errors.New("something else"), "_OTHER"},
	} {
		if got := errorType(tc.err); got != tc.want {
			t.Errorf("errorType(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
