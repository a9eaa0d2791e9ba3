// Package backends talks to OpenAI-compatible model servers: tier pools of
// endpoints, load balancing, one circuit breaker per endpoint, timeouts and
// retries before the first byte.
package backends

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/cascade-gateway/cascade/config"
)

// Sentinel errors, mapped to HTTP statuses in one place by the gateway.
var (
	// ErrUnavailable: no endpoint of the tier could take the request
	// (breakers open, connection errors, 502/503/504 on every try).
	ErrUnavailable = errors.New("no backend available")
	// ErrTimeout: the upstream did not answer in time.
	ErrTimeout = errors.New("upstream timed out")
)

// UpstreamError is a non-retryable error status from a backend; its body is
// passed through to the client.
type UpstreamError struct {
	Status int
	Body   []byte
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

// Endpoint is one upstream model server. Endpoints are shared between config
// snapshots: its breaker and load counters survive a reload.
type Endpoint struct {
	Tier   string
	URL    string // base URL without trailing slash, e.g. http://h:8000/v1
	Model  string
	Weight int
	apiKey string

	inflight atomic.Int64
	// queue is the upstream's own reported waiting requests (scraped), if any.
	queue atomic.Int64
	cb    *gobreaker.TwoStepCircuitBreaker[struct{}]
	tel   *endpointTel // span names and metric attributes (trace.go)
	// latency and errRate are recent moving averages (stats.go); load is the
	// last scraped report (scrape.go).
	latency, errRate ewma
	load             atomic.Pointer[Load]
}

// InFlight is the number of requests this gateway has outstanding on e.
func (e *Endpoint) InFlight() int64 { return e.inflight.Load() }

// SetQueue records the upstream's reported queue depth (from its metrics).
func (e *Endpoint) SetQueue(n int64) { e.queue.Store(n) }

// Queue is the last reported upstream queue depth.
func (e *Endpoint) Queue() int64 { return e.queue.Load() }

// BreakerState reports the endpoint's circuit breaker state.
func (e *Endpoint) BreakerState() gobreaker.State { return e.cb.State() }

// Available reports whether the breaker would currently let a request through.
func (e *Endpoint) Available() bool { return e.cb.State() != gobreaker.StateOpen }

func (e *Endpoint) key() string { return e.Tier + "|" + e.URL + "|" + e.Model }

func newEndpoint(tier string, ec config.Endpoint, bc config.Breaker) *Endpoint {
	e := &Endpoint{
		Tier:   tier,
		URL:    strings.TrimRight(ec.URL, "/"),
		Model:  ec.Model,
		Weight: ec.Weight,
		apiKey: ec.APIKey(),
	}
	e.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](breakerSettings(e.key(), bc))
	e.tel = newEndpointTel(e)
	return e
}

func breakerSettings(name string, bc config.Breaker) gobreaker.Settings {
	n := bc.ConsecutiveFailures
	return gobreaker.Settings{
		Name:        name,
		MaxRequests: bc.HalfOpenRequests,
		Timeout:     bc.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= n },
		// A client hanging up is not the backend's failure.
		IsSuccessful: func(err error) bool { return err == nil || errors.Is(err, context.Canceled) },
	}
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
	mu        sync.Mutex // protects endpoints
	endpoints map[string]*Endpoint
	client    *Client
}

// NewRegistry returns an empty registry using client for upstream calls.
func NewRegistry(client *Client) *Registry {
	return &Registry{endpoints: map[string]*Endpoint{}, client: client}
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
			fresh := newEndpoint(t.Name, ec, cfg.Breaker)
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
}

// Response is a successful (2xx) upstream answer whose body is still to be
// read. The caller must call Finish exactly once when done with it.
type Response struct {
	*http.Response
	Endpoint *Endpoint
	Attempts int
	done     func(error)
	att      attempt // the attempt's span and timing (trace.go)
}

// Finish reports the outcome of the whole exchange to the endpoint's breaker
// (nil or context.Canceled count as success) and releases its slot.
func (r *Response) Finish(err error) {
	r.Body.Close()
	r.Endpoint.inflight.Add(-1)
	r.att.end(r.Endpoint, err, 0)
	r.Endpoint.finish(r.done, err)
}

// Send tries endpoints of the pool until one answers 2xx, retrying on another
// endpoint (at most retries more times) after connection errors and 502/503/504.
// A non-retryable error status returns *UpstreamError. When every try failed it
// returns an error wrapping ErrUnavailable or ErrTimeout.
func (p *Pool) Send(ctx context.Context, c *Client, req *Request, retries int) (*Response, error) {
	var tried [8]*Endpoint
	excluded := tried[:0]
	var last error = ErrUnavailable
	for attempt := 0; attempt <= retries; attempt++ {
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
		e.inflight.Add(1)
		sent := time.Now()
		actx, att := c.tel.start(ctx, e, req)
		resp, err := c.do(actx, e, req)
		if err == nil && resp.StatusCode < 300 {
			e.observeLatency(time.Since(sent))
			return &Response{Response: resp, Endpoint: e, Attempts: len(excluded), done: done, att: att}, nil
		}
		e.inflight.Add(-1)
		att.end(e, err, statusOf(resp))
		if err != nil {
			if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
				e.finish(done, context.Canceled)
				return nil, ctx.Err()
			}
			e.finish(done, err)
			last = err
			continue
		}
		body := readLimited(resp, 1<<20)
		ue := &UpstreamError{Status: resp.StatusCode, Body: body}
		switch {
		case resp.StatusCode == http.StatusBadGateway, resp.StatusCode == http.StatusServiceUnavailable,
			resp.StatusCode == http.StatusGatewayTimeout:
			e.finish(done, ue)
			last = ue
			continue
		case resp.StatusCode >= 500:
			e.finish(done, ue)
			return nil, ue
		default: // 4xx: the request's fault, not the endpoint's
			e.finish(done, nil)
			return nil, ue
		}
	}
	if errors.Is(last, ErrTimeout) {
		return nil, last
	}
	if errors.Is(last, ErrUnavailable) {
		return nil, last
	}
	return nil, fmt.Errorf("%w: tier %q: %w", ErrUnavailable, p.Tier, last)
}

// Client is the upstream HTTP client: pooled keep-alive connections, connect
// and first-byte timeouts.
type Client struct {
	hc  *http.Client
	tel *telemetry // nil: no spans, no metrics (trace.go)
}

// NewClient builds a client with the given timeouts.
func NewClient(t config.Timeouts) *Client {
	tr := &http.Transport{
		Proxy:                 nil, // model servers are addressed directly
		DialContext:           (&net.Dialer{Timeout: t.Connect, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: t.FirstByte,
		DisableCompression:    true, // relay bytes as they come; SSE must not be buffered
	}
	return &Client{hc: &http.Client{Transport: tr}}
}

// CloseIdle closes idle upstream connections.
func (c *Client) CloseIdle() { c.hc.CloseIdleConnections() }

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
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: %s: %w", ErrTimeout, e.URL, err)
		}
		return nil, fmt.Errorf("%s: %w", e.URL, err)
	}
	return resp, nil
}
