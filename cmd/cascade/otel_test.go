package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/gateway"
)

// otlpSink keeps what an OTLP receiver was sent, over gRPC or HTTP.
type otlpSink struct {
	coltracepb.UnimplementedTraceServiceServer
	mu      sync.Mutex
	spans   []*tracepb.Span
	service []string // service.name of each resource that sent spans
	metrics map[string]bool
}

func newSink() *otlpSink { return &otlpSink{metrics: map[string]bool{}} }

func (s *otlpSink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.addTraces(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (s *otlpSink) addTraces(req *coltracepb.ExportTraceServiceRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		s.service = append(s.service, attrString(rs.GetResource().GetAttributes(), "service.name"))
		for _, ss := range rs.ScopeSpans {
			s.spans = append(s.spans, ss.Spans...)
		}
	}
}

func (s *otlpSink) addMetrics(req *colmetricpb.ExportMetricsServiceRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rm := range req.ResourceMetrics {
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				s.metrics[m.Name] = true
			}
		}
	}
}

// metricsServer adapts the sink to the metrics service (its Export method
// name clashes with the trace service's).
type metricsServer struct {
	colmetricpb.UnimplementedMetricsServiceServer
	s *otlpSink
}

func (m metricsServer) Export(_ context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	m.s.addMetrics(req)
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

func attrString(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

func attrValue(kvs []*commonpb.KeyValue, key string) (*commonpb.AnyValue, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return nil, false
}

// startGRPCSink serves the OTLP trace and metrics services on a loopback port.
func startGRPCSink(t *testing.T, s *otlpSink) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, s)
	colmetricpb.RegisterMetricsServiceServer(srv, metricsServer{s: s})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// startHTTPSink serves OTLP/HTTP with protobuf bodies under base path /otlp.
func startHTTPSink(t *testing.T, s *otlpSink) string {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || r.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		switch r.URL.Path {
		case "/otlp/v1/traces":
			var req coltracepb.ExportTraceServiceRequest
			if err := proto.Unmarshal(body, &req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			s.addTraces(&req)
			b, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
			w.Header().Set("Content-Type", "application/x-protobuf")
			w.Write(b)
		case "/otlp/v1/metrics":
			var req colmetricpb.ExportMetricsServiceRequest
			if err := proto.Unmarshal(body, &req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			s.addMetrics(&req)
			b, _ := proto.Marshal(&colmetricpb.ExportMetricsServiceResponse{})
			w.Header().Set("Content-Type", "application/x-protobuf")
			w.Write(b)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(ts.Close)
	return ts.URL + "/otlp"
}

// restoreGlobals puts otel's globals back to no-ops after a test that ran
// setupTelemetry.
func restoreGlobals(t *testing.T) {
	t.Cleanup(func() {
		otel.SetTracerProvider(tracenoop.NewTracerProvider())
		otel.SetMeterProvider(metricnoop.NewMeterProvider())
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator())
	})
}

func simURL(t *testing.T, model string) string {
	t.Helper()
	ts := httptest.NewServer(sim.New(sim.Config{Model: model}))
	t.Cleanup(ts.Close)
	return ts.URL + "/v1"
}

func otelTestConfig(t *testing.T, small, large string) *config.Config {
	t.Helper()
	c := config.Default()
	c.Tiers = []config.Tier{
		{Name: "small", Endpoints: []config.Endpoint{{URL: small, Model: "small-model", Weight: 1}}},
		{Name: "large", Endpoints: []config.Endpoint{{URL: large, Model: "large-model", Weight: 1}}},
	}
	c.Scrape.Interval = -1
	c.Telemetry.ServiceName = "cascade-otlp-test"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

// TestOTLPExport runs the gateway with the SDK as serve sets it up and checks
// that real OTLP (gRPC and HTTP/protobuf) arrives with the GenAI attributes.
func TestOTLPExport(t *testing.T) {
	for _, proto := range []string{"grpc", "http/protobuf"} {
		t.Run(proto, func(t *testing.T) {
			restoreGlobals(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
			t.Setenv("OTEL_SERVICE_NAME", "")
			sink := newSink()
			cfg := otelTestConfig(t, simURL(t, "small-model"), simURL(t, "large-model"))
			cfg.Telemetry.OTLPProtocol = proto
			if proto == "grpc" {
				cfg.Telemetry.OTLPEndpoint = startGRPCSink(t, sink)
			} else {
				cfg.Telemetry.OTLPEndpoint = startHTTPSink(t, sink)
			}
			ctx := context.Background()
			var opts gateway.Options
			shutdown, err := setupTelemetry(ctx, cfg, &opts)
			if err != nil {
				t.Fatal(err)
			}
			if opts.TracerProvider == nil || opts.MeterProvider == nil || opts.Metrics == nil {
				t.Fatalf("options not set: %+v", opts)
			}
			g, err := gateway.New(cfg, opts)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go g.App().Listener(ln)
			base := "http://" + ln.Addr().String()

			req, _ := http.NewRequest("POST", base+"/v1/chat/completions",
				strings.NewReader(`{"model":"small","messages":[{"role":"user","content":"hi"}]}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			// /metrics is served from the Prometheus reader of the same SDK.
			mresp, err := http.Get(base + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			mb, _ := io.ReadAll(mresp.Body)
			mresp.Body.Close()
			if !strings.Contains(string(mb), "cascade_requests_total{") {
				t.Fatalf("/metrics lacks cascade_requests_total:\n%s", mb)
			}

			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := g.Shutdown(sctx); err != nil {
				t.Fatal(err)
			}
			if err := shutdown(sctx); err != nil { // flushes both exporters
				t.Fatal(err)
			}

			sink.mu.Lock()
			defer sink.mu.Unlock()
			var server, attempt *tracepb.Span
			for _, s := range sink.spans {
				switch s.Name {
				case "POST /v1/chat/completions":
					server = s
				case "chat small-model":
					attempt = s
				}
			}
			if server == nil || attempt == nil {
				t.Fatalf("spans received: %d, want the server and the attempt span", len(sink.spans))
			}
			if len(sink.service) == 0 || sink.service[0] != "cascade-otlp-test" {
				t.Fatalf("service.name %v", sink.service)
			}
			if string(attempt.ParentSpanId) != string(server.SpanId) || string(server.TraceId) != string(attempt.TraceId) {
				t.Fatal("attempt span is not the server span's child")
			}
			if got := strings.ToLower(hexOf(server.TraceId)); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
				t.Fatalf("trace id %s does not continue the client's", got)
			}
			if attempt.Kind != tracepb.Span_SPAN_KIND_CLIENT || server.Kind != tracepb.Span_SPAN_KIND_SERVER {
				t.Fatalf("kinds %v %v", attempt.Kind, server.Kind)
			}
			for key, want := range map[string]string{
				"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
				"gen_ai.request.model": "small-model", "gen_ai.response.model": "small-model", "server.address": "127.0.0.1",
			} {
				if got := attrString(attempt.Attributes, key); got != want {
					t.Errorf("attempt %s = %q, want %q", key, got, want)
				}
			}
			for _, key := range []string{"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"} {
				if v, ok := attrValue(attempt.Attributes, key); !ok || v.GetIntValue() <= 0 {
					t.Errorf("attempt %s = %v", key, v)
				}
			}
			if v, ok := attrValue(attempt.Attributes, "gen_ai.response.finish_reasons"); !ok || len(v.GetArrayValue().GetValues()) != 1 {
				t.Errorf("finish reasons %v", v)
			}
			if got := attrString(server.Attributes, "cascade.tier"); got != "small" {
				t.Errorf("server cascade.tier %q", got)
			}
			if _, ok := attrValue(server.Attributes, "cascade.cost_usd"); !ok {
				t.Error("server span lacks cascade.cost_usd")
			}
			for _, m := range []string{"gen_ai.client.operation.duration", "gen_ai.client.token.usage", "cascade.requests", "cascade.breaker.state"} {
				if !sink.metrics[m] {
					t.Errorf("metric %s not received; got %v", m, sink.metrics)
				}
			}
		})
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestSetupTelemetryOptions(t *testing.T) {
	restoreGlobals(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	cfg := otelTestConfig(t, "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")
	cfg.Telemetry.Prometheus = false
	ratio := 0.0
	cfg.Telemetry.SampleRatio = &ratio
	var opts gateway.Options
	shutdown, err := setupTelemetry(context.Background(), cfg, &opts)
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	if opts.Metrics != nil {
		t.Fatal("telemetry.prometheus: false still serves /metrics")
	}
	// Ratio 0: a root span is not sampled, but a sampled parent is followed.
	_, span := opts.TracerProvider.Tracer("t").Start(context.Background(), "root")
	if span.SpanContext().IsSampled() {
		t.Fatal("sample_ratio 0 sampled a root span")
	}
	span.End()
	carrier := propagation.MapCarrier{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	pctx := otel.GetTextMapPropagator().Extract(context.Background(), carrier)
	_, child := opts.TracerProvider.Tracer("t").Start(pctx, "child")
	if !child.SpanContext().IsSampled() {
		t.Fatal("a sampled parent was not followed")
	}
	child.End()

	bad := *cfg
	bad.Telemetry.OTLPProtocol = "carrier-pigeon"
	bad.Telemetry.OTLPEndpoint = "127.0.0.1:4317"
	if _, err := setupTelemetry(context.Background(), &bad, &gateway.Options{}); err == nil {
		t.Fatal("an unknown protocol was accepted")
	}
}
