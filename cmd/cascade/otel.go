package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"

	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/gateway"
)

// setupTelemetry installs the OpenTelemetry SDK for cfg and returns the
// function that flushes and stops it on shutdown.
//
// Traces and metrics go over OTLP when telemetry.otlp_endpoint or
// OTEL_EXPORTER_OTLP_ENDPOINT (or the per-signal OTEL_EXPORTER_OTLP_TRACES_/
// METRICS_ENDPOINT) is set, by gRPC or HTTP/protobuf per
// telemetry.otlp_protocol; the exporters read the other standard OTEL_*
// variables (headers, timeout, compression, certificates) themselves. Metrics
// are also served on GET /metrics unless telemetry.prometheus is false.
func setupTelemetry(ctx context.Context, cfg *config.Config, opts *gateway.Options) (func(context.Context) error, error) {
	tc := cfg.Telemetry
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(orDefault(tc.ServiceName, "cascade"))),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
		resource.WithHost(),
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}

	var closers []func(context.Context) error
	shutdown := func(ctx context.Context) error {
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			errs = append(errs, closers[i](ctx))
		}
		return errors.Join(errs...)
	}
	fail := func(err error) (func(context.Context) error, error) {
		shutdown(ctx)
		return nil, fmt.Errorf("telemetry: %w", err)
	}

	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if tc.SampleRatio != nil {
		tpOpts = append(tpOpts, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(*tc.SampleRatio))))
	} // else the SDK default (parent-based always-on) or OTEL_TRACES_SAMPLER
	mpOpts := []sdkmetric.Option{sdkmetric.WithResource(res)}

	proto := strings.ToLower(orDefault(tc.OTLPProtocol, orDefault(os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "grpc")))
	if otlpOn(tc.OTLPEndpoint, "TRACES") {
		exp, err := traceExporter(ctx, proto, tc.OTLPEndpoint)
		if err != nil {
			return fail(err)
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	} else if tc.SampleRatio == nil && os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		// Nowhere to send spans: sample no new trace, instead of building
		// every span for nothing. A caller's sampled trace is still followed,
		// so its flag reaches the backend intact.
		tpOpts = append(tpOpts, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
	}
	if otlpOn(tc.OTLPEndpoint, "METRICS") {
		exp, err := metricExporter(ctx, proto, tc.OTLPEndpoint)
		if err != nil {
			return fail(err)
		}
		// The interval follows OTEL_METRIC_EXPORT_INTERVAL (default 60s).
		mpOpts = append(mpOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)))
	}
	if tc.Prometheus {
		reg := prometheus.NewRegistry()
		exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutUnits())
		if err != nil {
			return fail(err)
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(exp))
		opts.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	}

	tp := sdktrace.NewTracerProvider(tpOpts...)
	closers = append(closers, tp.Shutdown)
	mp := sdkmetric.NewMeterProvider(mpOpts...)
	closers = append(closers, mp.Shutdown)

	opts.TracerProvider, opts.MeterProvider = tp, mp
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return shutdown, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// otlpOn reports whether a signal ("TRACES" or "METRICS") has an OTLP
// endpoint: from the config or the standard environment variables.
func otlpOn(endpoint, signal string) bool {
	return endpoint != "" || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" ||
		os.Getenv("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") != ""
}

// otlpTarget splits a configured endpoint ("host:port" or a URL) into the
// host:port, whether to skip TLS (anything but https) and the URL's path.
func otlpTarget(endpoint string) (host string, insecure bool, path string, err error) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, true, "", nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return "", false, "", fmt.Errorf("telemetry.otlp_endpoint %q is not host:port or a URL", endpoint)
	}
	return u.Host, u.Scheme != "https", strings.TrimRight(u.Path, "/"), nil
}

func traceExporter(ctx context.Context, proto, endpoint string) (sdktrace.SpanExporter, error) {
	switch proto {
	case "grpc":
		var o []otlptracegrpc.Option
		if endpoint != "" {
			host, insecure, _, err := otlpTarget(endpoint)
			if err != nil {
				return nil, err
			}
			o = append(o, otlptracegrpc.WithEndpoint(host))
			if insecure {
				o = append(o, otlptracegrpc.WithInsecure())
			}
		}
		return otlptracegrpc.New(ctx, o...)
	case "http/protobuf", "http":
		var o []otlptracehttp.Option
		if endpoint != "" {
			host, insecure, path, err := otlpTarget(endpoint)
			if err != nil {
				return nil, err
			}
			o = append(o, otlptracehttp.WithEndpoint(host), otlptracehttp.WithURLPath(path+"/v1/traces"))
			if insecure {
				o = append(o, otlptracehttp.WithInsecure())
			}
		}
		return otlptracehttp.New(ctx, o...)
	}
	return nil, fmt.Errorf("telemetry.otlp_protocol %q: want grpc or http/protobuf", proto)
}

func metricExporter(ctx context.Context, proto, endpoint string) (sdkmetric.Exporter, error) {
	switch proto {
	case "grpc":
		var o []otlpmetricgrpc.Option
		if endpoint != "" {
			host, insecure, _, err := otlpTarget(endpoint)
			if err != nil {
				return nil, err
			}
			o = append(o, otlpmetricgrpc.WithEndpoint(host))
			if insecure {
				o = append(o, otlpmetricgrpc.WithInsecure())
			}
		}
		return otlpmetricgrpc.New(ctx, o...)
	case "http/protobuf", "http":
		var o []otlpmetrichttp.Option
		if endpoint != "" {
			host, insecure, path, err := otlpTarget(endpoint)
			if err != nil {
				return nil, err
			}
			o = append(o, otlpmetrichttp.WithEndpoint(host), otlpmetrichttp.WithURLPath(path+"/v1/metrics"))
			if insecure {
				o = append(o, otlpmetrichttp.WithInsecure())
			}
		}
		return otlpmetrichttp.New(ctx, o...)
	}
	return nil, fmt.Errorf("telemetry.otlp_protocol %q: want grpc or http/protobuf", proto)
}
