package backends

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ScopeName is the instrumentation scope of Cascade's spans and metrics.
const ScopeName = "github.com/cascade-gateway/cascade"

// ProviderName is the gen_ai.provider.name of every upstream: they all speak
// the OpenAI API.
const ProviderName = "openai"

// Bucket boundaries recommended by the GenAI semantic conventions.
var (
	// DurationBuckets (seconds) for gen_ai.client.operation.duration and
	// time to first chunk.
	DurationBuckets = []float64{0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92}
	// TokenBuckets for gen_ai.client.token.usage.
	TokenBuckets = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864}
)

// CascadeTierKey is the attribute naming the tier on spans and metrics.
const CascadeTierKey = attribute.Key("cascade.tier")

// telemetry is the client's tracer, propagator and per-attempt instruments.
// The zero value traces nothing and measures nothing.
type telemetry struct {
	tracer   trace.Tracer
	prop     propagation.TextMapPropagator
	duration metric.Float64Histogram
	tokens   metric.Int64Histogram
}

// SetTelemetry makes c open a client span per upstream attempt (named
// "chat {model}" or "text_completion {model}"), inject the W3C trace context
// into the upstream request, and record gen_ai.client.operation.duration and
// gen_ai.client.token.usage. Call it before the client is used.
func (c *Client) SetTelemetry(tp trace.TracerProvider, mp metric.MeterProvider, prop propagation.TextMapPropagator) error {
	t := &telemetry{prop: prop}
	if tp != nil {
		t.tracer = tp.Tracer(ScopeName)
	}
	if mp != nil {
		m := mp.Meter(ScopeName)
		var err error
		t.duration, err = m.Float64Histogram("gen_ai.client.operation.duration", metric.WithUnit("s"),
			metric.WithDescription("GenAI operation duration."),
			metric.WithExplicitBucketBoundaries(DurationBuckets...))
		if err != nil {
			return err
		}
		t.tokens, err = m.Int64Histogram("gen_ai.client.token.usage", metric.WithUnit("{token}"),
			metric.WithDescription("Number of input and output tokens used."),
			metric.WithExplicitBucketBoundaries(TokenBuckets...))
		if err != nil {
			return err
		}
	}
	c.tel = t
	return nil
}

// endpointTel is what an endpoint's attempts share, built once per endpoint.
type endpointTel struct {
	host string
	port int
	// spanAttrs are the attempt span's start attributes, per operation.
	spanAttrs [2][]attribute.KeyValue
	spanName  [2]string
	// okDuration records a successful attempt whose response model is the
	// endpoint's model, per operation.
	okDuration [2][]metric.RecordOption
	// tokens records input and output usage for the endpoint's model.
	inTokens, outTokens []metric.RecordOption
}

const (
	opChat = iota
	opCompletion
)

var opNames = [2]attribute.KeyValue{semconv.GenAIOperationNameChat, semconv.GenAIOperationNameTextCompletion}

func opOf(path string) int {
	if path == "/completions" {
		return opCompletion
	}
	return opChat
}

func newEndpointTel(e *Endpoint) *endpointTel {
	t := &endpointTel{}
	if u, err := url.Parse(e.URL); err == nil {
		t.host = u.Hostname()
		t.port, _ = strconv.Atoi(u.Port())
		if t.port == 0 {
			t.port = 80
			if u.Scheme == "https" {
				t.port = 443
			}
		}
	}
	for op := range 2 {
		name := opNames[op].Value.AsString()
		t.spanName[op] = name + " " + e.Model
		t.spanAttrs[op] = []attribute.KeyValue{
			opNames[op],
			semconv.GenAIProviderNameKey.String(ProviderName),
			semconv.GenAIRequestModel(e.Model),
			semconv.ServerAddress(t.host),
			semconv.ServerPort(t.port),
			CascadeTierKey.String(e.Tier),
		}
		t.okDuration[op] = []metric.RecordOption{metric.WithAttributeSet(durationSet(op, e, e.Model, ""))}
	}
	t.inTokens = []metric.RecordOption{metric.WithAttributeSet(tokenSet(e, e.Model, semconv.GenAITokenTypeInput))}
	t.outTokens = []metric.RecordOption{metric.WithAttributeSet(tokenSet(e, e.Model, semconv.GenAITokenTypeOutput))}
	return t
}

func durationSet(op int, e *Endpoint, respModel, errType string) attribute.Set {
	kv := []attribute.KeyValue{opNames[op], semconv.GenAIRequestModel(e.Model), CascadeTierKey.String(e.Tier)}
	if respModel != "" {
		kv = append(kv, semconv.GenAIResponseModel(respModel))
	}
	if errType != "" {
		kv = append(kv, semconv.ErrorTypeKey.String(errType))
	}
	return attribute.NewSet(kv...)
}

func tokenSet(e *Endpoint, respModel string, typ attribute.KeyValue) attribute.Set {
	return attribute.NewSet(typ, semconv.GenAIResponseModel(respModel), CascadeTierKey.String(e.Tier))
}

// attempt is one upstream call in progress.
type attempt struct {
	tel   *telemetry
	span  trace.Span
	began time.Time
	op    int
	// respModel is the model the backend said answered, once known.
	respModel string
}

// start opens the attempt's client span; ctx carries it to c.do.
func (t *telemetry) start(ctx context.Context, e *Endpoint, req *Request) (context.Context, attempt) {
	a := attempt{tel: t, op: opOf(req.Path)}
	if t == nil {
		return ctx, a
	}
	if t.duration != nil {
		a.began = time.Now()
	}
	if t.tracer != nil {
		et := e.tel
		ctx, a.span = t.tracer.Start(ctx, et.spanName[a.op], trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(et.spanAttrs[a.op]...))
	}
	return ctx, a
}

// inject writes the trace context of ctx into h.
func (t *telemetry) inject(ctx context.Context, h http.Header) {
	if t == nil || t.prop == nil || t.tracer == nil {
		return
	}
	t.prop.Inject(ctx, propagation.HeaderCarrier(h))
}

// end closes the attempt: err is nil on success; status is the upstream's
// HTTP status when it answered.
func (a *attempt) end(e *Endpoint, err error, status int) {
	if a.tel == nil {
		return
	}
	errType := ""
	switch {
	case err == nil && status >= 300:
		errType = strconv.Itoa(status)
	case err != nil:
		errType = errorType(err)
	}
	if a.tel.duration != nil && !a.began.IsZero() {
		d := time.Since(a.began).Seconds()
		ctx := context.Background()
		if errType == "" && (a.respModel == "" || a.respModel == e.Model) {
			if a.respModel == "" {
				a.tel.duration.Record(ctx, d, metric.WithAttributeSet(durationSet(a.op, e, "", "")))
			} else {
				a.tel.duration.Record(ctx, d, e.tel.okDuration[a.op]...)
			}
		} else {
			a.tel.duration.Record(ctx, d, metric.WithAttributeSet(durationSet(a.op, e, a.respModel, errType)))
		}
	}
	if a.span == nil {
		return
	}
	if errType != "" {
		a.span.SetAttributes(semconv.ErrorTypeKey.String(errType))
		if errType != "cancelled" {
			msg := errType
			if err != nil {
				msg = err.Error()
			}
			a.span.SetStatus(codes.Error, msg)
		}
	}
	a.span.End()
}

// errorType is a low-cardinality error.type for a failed attempt.
func errorType(err error) string {
	var ue *UpstreamError
	var ne net.Error
	switch {
	case errors.As(err, &ue):
		return strconv.Itoa(ue.Status)
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrInvalidResponse):
		return "invalid_response"
	case errors.Is(err, ErrStreamTruncated):
		return "stream_truncated"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.As(err, &ne):
		return "connection_error"
	}
	return semconv.ErrorTypeOther.Value.AsString()
}

// SpanContext is the upstream attempt's span context (invalid when not traced).
func (r *Response) SpanContext() trace.SpanContext {
	if r.att.span == nil {
		return trace.SpanContext{}
	}
	return r.att.span.SpanContext()
}

// RecordUsage puts what the backend reported (response model, finish reason,
// token usage) on the attempt's span and token metrics. Call it before Finish.
func (r *Response) RecordUsage(u Usage) {
	a := &r.att
	if a.tel == nil {
		return
	}
	a.respModel = u.ResponseModel
	if u.Reported && a.tel.tokens != nil {
		ctx := context.Background()
		e := r.Endpoint
		if u.ResponseModel == "" || u.ResponseModel == e.Model {
			a.tel.tokens.Record(ctx, int64(u.InputTokens), e.tel.inTokens...)
			a.tel.tokens.Record(ctx, int64(u.OutputTokens), e.tel.outTokens...)
		} else {
			a.tel.tokens.Record(ctx, int64(u.InputTokens), metric.WithAttributeSet(tokenSet(e, u.ResponseModel, semconv.GenAITokenTypeInput)))
			a.tel.tokens.Record(ctx, int64(u.OutputTokens), metric.WithAttributeSet(tokenSet(e, u.ResponseModel, semconv.GenAITokenTypeOutput)))
		}
	}
	if a.span == nil || !a.span.IsRecording() {
		return
	}
	kv := make([]attribute.KeyValue, 0, 4)
	if u.ResponseModel != "" {
		kv = append(kv, semconv.GenAIResponseModel(u.ResponseModel))
	}
	if u.FinishReason != "" {
		kv = append(kv, semconv.GenAIResponseFinishReasons(u.FinishReason))
	}
	if u.Reported {
		kv = append(kv, semconv.GenAIUsageInputTokens(u.InputTokens), semconv.GenAIUsageOutputTokens(u.OutputTokens))
	}
	a.span.SetAttributes(kv...)
}

// Span is the attempt's client span, for events such as captured content;
// a non-recording span when not traced.
func (r *Response) Span() trace.Span {
	if r.att.span == nil {
		return noop.Span{}
	}
	return r.att.span
}

func statusOf(r *http.Response) int {
	if r == nil {
		return 0
	}
	return r.StatusCode
}
