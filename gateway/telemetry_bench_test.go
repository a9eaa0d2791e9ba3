package gateway

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// discardExporter drops spans; the benchmark measures producing them.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// BenchmarkHandlerTelemetry is BenchmarkHandlerInProcess with the OTel SDK
// installed: "off" uses otel's no-op globals, "metrics" an SDK meter only,
// "unsampled" adds an SDK tracer that samples nothing (sample_ratio 0), and
// "sampled" one that records every request (a server span and a client span).
// The differences to "off" are what telemetry costs a request.
func BenchmarkHandlerTelemetry(b *testing.B) {
	_, simURL := simServer(b, sim.Config{Model: "small-model", MinTokens: 32, MaxTokens: 32})
	body := benchChatBody(1<<10, false)
	mk := func(sampler sdktrace.Sampler, metrics bool) Options {
		var o Options
		if metrics {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			b.Cleanup(func() { mp.Shutdown(context.Background()) })
			o.MeterProvider = mp
		}
		if sampler != nil {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler),
				sdktrace.WithBatcher(discardExporter{}))
			b.Cleanup(func() { tp.Shutdown(context.Background()) })
			o.TracerProvider = tp
		}
		return o
	}
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"off", Options{}},
		{"metrics", mk(nil, true)},
		{"unsampled", mk(sdktrace.NeverSample(), true)},
		{"sampled", mk(sdktrace.AlwaysSample(), true)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			g, _ := startGateway(b, testConfig(b, []string{simURL}, []string{simURL}), tc.opts)
			benchInProcess(b, g, body)
		})
	}
}
