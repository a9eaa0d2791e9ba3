// Package backends talks to OpenAI-compatible model servers: tier pools of
// endpoints, load balancing, one circuit breaker per endpoint, timeouts and
// retries before the first byte.
package backends

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/cascade-gateway/cascade/config"
)

// Sentinel errors, mapped to HTTP statuses in one place by the gateway.
var (
	// ErrUnavailable: no endpoint of the tier could take the request
	// (breakers open, cooling down after 429/503, connection errors,
	// 502/503/504 on every try).
	ErrUnavailable = errors.New("no backend available")
	// ErrTimeout: the upstream did not answer in time (no response headers
	// within the attempt's wait, or a body that stalled).
	ErrTimeout = errors.New("upstream timed out")
	// ErrInvalidResponse: the upstream answered 2xx with something that is
	// not a completion (not JSON, no choices, too large, cut off), or sent a
	// stream event that is neither a JSON object nor [DONE].
	ErrInvalidResponse = errors.New("upstream answer is not a valid completion")
	// ErrStreamTruncated: the upstream stream ended before "data: [DONE]".
	ErrStreamTruncated = fmt.Errorf("upstream stream ended before [DONE]: %w", io.ErrUnexpectedEOF)
)

// UpstreamError is an error status from a backend; its body is passed
// through to the client.
type UpstreamError struct {
	Status int
	Body   []byte
	// retryAfter is the answer's Retry-After header, if any.
	retryAfter string
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("upstream answered %d: %s", e.Status, truncate(e.Body, 200))
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// SendError is every error Pool.Send returns: the tier, the endpoints the
// request was sent to and why Send gave up. Its message names the tier and
// what the last attempt failed with, never an endpoint's URL (messages reach
// clients; URLs go to the log only).
type SendError struct {
	Tier string
	// Tried are the endpoints the request was sent to, in order; empty when
	// none could take it.
	Tried []*Endpoint
	// RetryAfter, with ErrUnavailable, is how long until the first endpoint
	// of the tier that is cooling down (after a 429 or a 503 with
	// Retry-After) takes requests again; 0 when none is.
	RetryAfter time.Duration
	// Err is ErrUnavailable or ErrTimeout (possibly wrapped), a non-retryable
	// *UpstreamError, or the context's error when the caller gave up.
	Err error
	// last says what the last attempt failed with, without any address.
	last string
}

func (e *SendError) Error() string {
	msg := fmt.Sprintf("tier %q: %v", e.Tier, e.Err)
	if e.last != "" {
		msg += fmt.Sprintf(" (endpoints tried: %d; the last one: %s)", len(e.Tried), e.last)
	}
	return msg
}

func (e *SendError) Unwrap() error { return e.Err }

// TriedEndpoint is the last endpoint a request was sent to according to err
// (a *SendError in its chain), or nil when none was.
func TriedEndpoint(err error) *Endpoint {
	var se *SendError
	if errors.As(err, &se) && len(se.Tried) > 0 {
		return se.Tried[len(se.Tried)-1]
	}
	return nil
}

// RetryAfter is the SendError.RetryAfter in err's chain, 0 when none.
func RetryAfter(err error) time.Duration {
	var se *SendError
	if errors.As(err, &se) {
		return se.RetryAfter
	}
	return 0
}

// Endpoint is one upstream model server. Endpoints are shared between config
// snapshots: its breaker, cool-down and load counters survive a reload.
type Endpoint struct {
	Tier   string
	URL    string // base URL without trailing slash, e.g. http://h:8000/v1
	Model  string
	Weight int
	apiKey string

	inflight atomic.Int64
	logprobs atomic.Int32 // 0 unknown, 1 sends them, 2 does not (Logprobs)
	// queue is the upstream's own reported waiting requests (scraped), if any.
	queue atomic.Int64
	// coolUntil is when a cool-down asked for by the upstream (429, or 503
	// with Retry-After) ends, in Unix nanoseconds; 0 when none was asked.
	coolUntil atomic.Int64
	cb        *gobreaker.TwoStepCircuitBreaker[struct{}]
	tel       *endpointTel // span names and metric attributes (trace.go)
	// latency and errRate are recent moving averages (stats.go); load is the
	// last scraped report (scrape.go).
	latency, errRate ewma
	load             atomic.Pointer[Load]
	logs             logLimit // log.go
}

// InFlight is the number of requests this gateway has outstanding on e.
func (e *Endpoint) InFlight() int64 { return e.inflight.Load() }

// SetQueue records the upstream's reported queue depth (from its metrics).
func (e *Endpoint) SetQueue(n int64) { e.queue.Store(n) }

// Queue is the last reported upstream queue depth.
func (e *Endpoint) Queue() int64 { return e.queue.Load() }

// BreakerState reports the endpoint's circuit breaker state.
func (e *Endpoint) BreakerState() gobreaker.State { return e.cb.State() }

// Available reports whether e would currently take a request: its breaker
// is not open and it is not cooling down.
func (e *Endpoint) Available() bool {
	return e.cb.State() != gobreaker.StateOpen && e.CoolDownLeft() == 0
}

// Logprobs reports whether e's answers carry token logprobs when asked:
// "yes", "no", or "" until an answer was seen. The cascade's verifier falls
// back to the answer text for endpoints that send none.
func (e *Endpoint) Logprobs() string {
	switch e.logprobs.Load() {
	case 1:
		return "yes"
	case 2:
		return "no"
	}
	return ""
}

// SawLogprobs records whether an answer asked for with logprobs had them.
func (e *Endpoint) SawLogprobs(had bool) {
	v := int32(2)
	if had {
		v = 1
	}
	e.logprobs.Store(v)
}

// CoolDownLeft is how long e still cools down after the upstream asked for
// a pause (429, or 503 with Retry-After); 0 when it does not.
func (e *Endpoint) CoolDownLeft() time.Duration {
	until := e.coolUntil.Load()
	if until == 0 {
		return 0
	}
	left := until - time.Now().UnixNano()
	if left <= 0 {
		e.coolUntil.CompareAndSwap(until, 0) // spare later calls the clock
		return 0
	}
	return time.Duration(left)
}

// Cool-down bounds. A 429 without Retry-After still pauses the endpoint
// briefly, or every request would knock on it again at once. A cool-down
// hides the endpoint from every request of this gateway, so one answer may
// not take it out for long: an endpoint that keeps failing is the breaker's
// business.
const (
	defaultCoolDown = time.Second
	maxCoolDown     = time.Minute
)

// coolDown pauses e for d after an answer with status, logging when the
// pause begins (not when a running one is extended).
func (e *Endpoint) coolDown(d time.Duration, status int) {
	if d <= 0 {
		return
	}
	now := time.Now().UnixNano()
	until := now + int64(d)
	for {
		old := e.coolUntil.Load()
		if old >= until {
			return
		}
		if e.coolUntil.CompareAndSwap(old, until) {
			if old <= now {
				e.logCoolDown(d, status)
			}
			return
		}
	}
}

// parseRetryAfter reads a Retry-After header (delay in seconds or an HTTP
// date) as a cool-down, capped at maxCoolDown.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return min(time.Duration(min(n, int64(maxCoolDown/time.Second)))*time.Second, maxCoolDown), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return min(max(t.Sub(now), 0), maxCoolDown), true
}

func (e *Endpoint) key() string { return e.Tier + "|" + e.URL + "|" + e.Model }

func newEndpoint(tier string, ec config.Endpoint, bc config.Breaker, log *slog.Logger) *Endpoint {
	e := &Endpoint{
		Tier:   tier,
		URL:    strings.TrimRight(ec.URL, "/"),
		Model:  ec.Model,
		Weight: ec.Weight,
		apiKey: ec.APIKey(),
		logs:   logLimit{log: log},
	}
	st := breakerSettings(e.key(), bc)
	st.OnStateChange = func(_ string, from, to gobreaker.State) { e.logBreaker(from, to) }
	e.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](st)
	e.tel = newEndpointTel(e)
	return e
}

func breakerSettings(name string, bc config.Breaker) gobreaker.Settings {
	n := bc.ConsecutiveFailures
	return gobreaker.Settings{
		Name:         name,
		MaxRequests:  bc.HalfOpenRequests,
		Timeout:      bc.OpenFor,
		ReadyToTrip:  func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= n },
		IsSuccessful: func(err error) bool { return !failed(err) },
	}
}

// failed reports whether err counts against the endpoint: anything but
// success and the client hanging up. A timeout or an invalid answer counts
// even when cancelling the attempt is how it ended.
func failed(err error) bool {
	return err != nil && (!errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) || errors.Is(err, ErrInvalidResponse))
}

// Pool is the set of endpoints serving one tier.
type Pool struct {
	Tier      string
	Endpoints []*Endpoint
	balancer  Balancer
}

// Registry keeps endpoints across reloads, keyed by tier, URL and model, so
// an unchanged endpoint keeps its breaker and in-flight count.
type Registry struct {
	mu        sync.Mutex // protects endpoints and log
	endpoints map[string]*Endpoint
	client    *Client
	log       *slog.Logger
}

// NewRegistry returns an empty registry using client for upstream calls.
func NewRegistry(client *Client) *Registry {
	return &Registry{endpoints: map[string]*Endpoint{}, client: client}
}

// SetLogger sets where endpoints built from now on write their operational
// lines (breaker transitions, failures, cool-downs). nil, the default, means
// slog.Default() at the time of each line. Call it before the first Pools.
func (r *Registry) SetLogger(l *slog.Logger) {
	r.mu.Lock()
	r.log = l
	r.mu.Unlock()
}

// Client returns the upstream client.
func (r *Registry) Client() *Client { return r.client }

// Pools builds a pool per tier of cfg, reusing known endpoints. Endpoints no
// longer in cfg are forgotten once the returned pools replace the old ones.
func (r *Registry) Pools(cfg *config.Config) map[string]*Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	next := make(map[string]*Endpoint, len(r.endpoints))
	pools := make(map[string]*Pool, len(cfg.Tiers))
	for _, t := range cfg.Tiers {
		p := &Pool{Tier: t.Name, balancer: NewP2C()}
		for _, ec := range t.Endpoints {
			fresh := newEndpoint(t.Name, ec, cfg.Breaker, r.log)
			if old, ok := r.endpoints[fresh.key()]; ok && old.apiKey == fresh.apiKey && old.Weight == fresh.Weight {
				fresh = old
			}
			next[fresh.key()] = fresh
			p.Endpoints = append(p.Endpoints, fresh)
		}
		pools[t.Name] = p
	}
	r.endpoints = next
	return pools
}

// Request is one upstream call: the path under the endpoint's base URL
// ("/chat/completions") and a body builder that rewrites the model name.
type Request struct {
	Path string
	// Body returns the bytes to send to e (with e's model name).
	Body   func(e *Endpoint) []byte
	Header http.Header // extra headers (trace context, request id)
	// Deadline is when the response headers must have arrived, across every
	// attempt and every tier the caller tries: each attempt waits at most
	// the client's first-byte timeout and at most until Deadline. The zero
	// value sets no bound but the first-byte timeout per attempt.
	Deadline time.Time
	// Stream says the request asks for an SSE stream: a 2xx answer that is
	// not text/event-stream is then an invalid answer, counted against the
	// endpoint and retried on another.
	Stream bool
}

// Response is a successful (2xx) upstream answer whose body is still to be
// read. The caller must call Finish exactly once when done with it.
type Response struct {
	*http.Response
	// Endpoint is the endpoint that answered.
	Endpoint *Endpoint
	// Attempts is how many endpoints the request was sent to, this one included.
	Attempts int
	done     func(error)
	att      attempt // the attempt's span and timing (trace.go)
	// cancel ends the attempt's context, which the body is bound to.
	cancel context.CancelFunc
	// idleFired is set when ReadAnswer's idle timer cancelled the attempt.
	idleFired atomic.Bool
}

// Finish reports the outcome of the whole exchange to the endpoint's breaker
// and releases its slot. nil and errors wrapping context.Canceled (the
// client left) count as success; anything else, including ErrTimeout and
// ErrInvalidResponse from reading the body, counts as the endpoint's failure
// and is logged.
func (r *Response) Finish(err error) {
	r.Body.Close()
	if r.cancel != nil {
		r.cancel()
	}
	r.Endpoint.inflight.Add(-1)
	r.att.end(r.Endpoint, err, 0)
	if failed(err) {
		r.Endpoint.logFailure(err)
	}
	r.Endpoint.finish(r.done, err)
}

// Send tries endpoints of the pool until one answers 2xx, retrying on another
// endpoint (at most retries more times) after connection errors, timeouts,
// 502/503/504, 429 and (for a stream) a 2xx that is not SSE; an endpoint that answered 429 or 503 with
// Retry-After cools down (is not picked) for that long. Each attempt waits
// for response headers at most the client's first-byte timeout and at most
// until req.Deadline. Every error is a *SendError, wrapping a non-retryable
// *UpstreamError (other 4xx, which do not count against the endpoint, and
// other 5xx), ErrTimeout, ErrUnavailable (with RetryAfter when endpoints
// are cooling down) or the context's error.
func (p *Pool) Send(ctx context.Context, c *Client, req *Request, retries int) (*Response, error) {
	var exBuf, trBuf [8]*Endpoint
	excluded, tried := exBuf[:0], trBuf[:0]
	var last error
	for attempt := 0; attempt <= retries; attempt++ {
		wait := c.firstByte
		if !req.Deadline.IsZero() {
			left := time.Until(req.Deadline)
			if left <= 0 {
				return nil, p.fail(tried, errDeadline, last)
			}
			if wait <= 0 || left < wait {
				wait = left
			}
		}
		e := p.balancer.Pick(p.Endpoints, excluded)
		if e == nil {
			break
		}
		excluded = append(excluded, e)
		done, err := e.cb.Allow()
		if err != nil { // open or half-open and full
			attempt--
			continue
		}
		tried = append(tried, e)
		e.inflight.Add(1)
		sent := time.Now()
		actx, att := c.tel.start(ctx, e, req)
		resp, cancel, err := c.try(actx, e, req, wait)
		if err == nil {
			e.observeLatency(time.Since(sent))
			return &Response{Response: resp, Endpoint: e, Attempts: len(tried), done: done, att: att, cancel: cancel}, nil
		}
		e.inflight.Add(-1)
		att.end(e, err, 0)
		var ue *UpstreamError
		if !errors.As(err, &ue) {
			if cerr := ctx.Err(); cerr != nil { // the caller gave up: no retry
				if errors.Is(cerr, context.DeadlineExceeded) {
					cerr = fmt.Errorf("%w: the request's time ran out", ErrTimeout)
					e.logFailure(cerr)
				}
				e.finish(done, cerr)
				return nil, p.fail(tried, cerr, nil)
			}
			e.finish(done, err)
			e.logFailure(err)
			last = err
			continue
		}
		switch st := ue.Status; {
		case st == http.StatusTooManyRequests: // busy, not broken
			e.finish(done, nil)
			d, ok := parseRetryAfter(ue.retryAfter, time.Now())
			if !ok {
				d = defaultCoolDown
			}
			e.coolDown(d, st)
			last = err
		case st == http.StatusServiceUnavailable, st == http.StatusBadGateway, st == http.StatusGatewayTimeout:
			if d, ok := parseRetryAfter(ue.retryAfter, time.Now()); ok && st == http.StatusServiceUnavailable {
				e.coolDown(d, st)
			}
			e.finish(done, err)
			e.logFailure(err)
			last = err
		case st >= 500:
			e.finish(done, err)
			e.logFailure(err)
			return nil, p.fail(tried, ue, nil)
		default: // 4xx: the request's fault, not the endpoint's
			e.finish(done, nil)
			return nil, p.fail(tried, ue, nil)
		}
	}
	if errors.Is(last, ErrTimeout) {
		return nil, p.fail(tried, ErrTimeout, last)
	}
	return nil, p.fail(tried, ErrUnavailable, last)
}

// errDeadline ends an attempt chain whose Request.Deadline passed.
var errDeadline = fmt.Errorf("%w: no response headers before the deadline of the attempts", ErrTimeout)

// fail builds Send's error: err is why Send gives up, last the last
// attempt's failure (nil when err says it all).
func (p *Pool) fail(tried []*Endpoint, err, last error) *SendError {
	se := &SendError{Tier: p.Tier, Tried: slices.Clone(tried), Err: err}
	if last != nil {
		se.last = describe(last)
	}
	if errors.Is(err, ErrUnavailable) {
		for _, e := range p.Endpoints {
			if d := e.CoolDownLeft(); d > 0 && (se.RetryAfter == 0 || d < se.RetryAfter) {
				se.RetryAfter = d
			}
		}
	}
	return se
}

// describe says what an attempt failed with in words fit for a client:
// no address, no URL.
func describe(err error) string {
	var ue *UpstreamError
	var errno syscall.Errno
	switch {
	case errors.As(err, &ue):
		return "status " + strconv.Itoa(ue.Status)
	case errors.Is(err, ErrTimeout):
		return "timed out"
	case errors.Is(err, ErrInvalidResponse):
		return "invalid answer"
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	}
	return "connection failed"
}

// Client is the upstream HTTP client: pooled keep-alive connections, connect
// and first-byte timeouts.
type Client struct {
	hc  *http.Client
	tel *telemetry // nil: no spans, no metrics (trace.go)
	// firstByte is the longest an attempt waits for response headers; 0
	// means no bound but the request's.
	firstByte time.Duration
}

// NewClient builds a client with the given timeouts (Connect and FirstByte).
func NewClient(t config.Timeouts) *Client {
	tr := &http.Transport{
		Proxy:               nil, // model servers are addressed directly
		DialContext:         (&net.Dialer{Timeout: t.Connect, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		// No ResponseHeaderTimeout: the wait for headers is per attempt and
		// shrinks with the request's deadline (try).
		DisableCompression: true, // relay bytes as they come; SSE must not be buffered
	}
	return &Client{hc: &http.Client{Transport: tr}, firstByte: t.FirstByte}
}

// CloseIdle closes idle upstream connections.
func (c *Client) CloseIdle() { c.hc.CloseIdleConnections() }

// maxErrorBody bounds how much of an error answer is read (and passed on).
const maxErrorBody = 64 << 10

// try is one attempt: it sends req to e and waits at most wait (0: no
// bound) for the response headers; then the timer stops, so the body is
// bound only to ctx and the returned cancel, which the caller must call when
// done with the body. A non-2xx answer is returned as *UpstreamError, its
// body read (while the timer still runs) and closed; a stream that is not
// one wraps ErrInvalidResponse.
func (c *Client) try(ctx context.Context, e *Endpoint, req *Request, wait time.Duration) (*http.Response, context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(ctx)
	var timer *time.Timer
	if wait > 0 {
		timer = time.AfterFunc(wait, cancel)
	}
	resp, err := c.do(ctx, e, req)
	if err == nil && resp.StatusCode < 300 && req.Stream && !isEventStream(resp.Header.Get("Content-Type")) {
		resp.Body.Close()
		err = fmt.Errorf("%w: content type %q for a stream", ErrInvalidResponse, truncate([]byte(resp.Header.Get("Content-Type")), 60))
	}
	if err == nil && resp.StatusCode >= 300 {
		ue := &UpstreamError{Status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
		ue.Body, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		if timer != nil {
			timer.Stop()
		}
		cancel()
		return nil, nil, ue
	}
	if timer != nil && !timer.Stop() { // the wait ran out, perhaps as the headers came
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		return nil, nil, fmt.Errorf("%w: no response headers within %v", ErrTimeout, wait)
	}
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return resp, cancel, nil
}

func (c *Client) do(ctx context.Context, e *Endpoint, req *Request) (*http.Response, error) {
	body := req.Body(e)
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL+req.Path, bytesReader(body))
	if err != nil {
		return nil, err
	}
	hr.ContentLength = int64(len(body))
	for k, v := range req.Header {
		hr.Header[k] = v
	}
	c.tel.inject(ctx, hr.Header)
	hr.Header.Set("Content-Type", "application/json")
	if e.apiKey != "" {
		hr.Header.Set("Authorization", "Bearer "+e.apiKey)
	}
	resp, err := c.hc.Do(hr)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
			return nil, fmt.Errorf("%w: %w", ErrTimeout, err)
		}
		return nil, err
	}
	return resp, nil
}
