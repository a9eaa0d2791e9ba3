// Package config holds Cascade's configuration: plain structs, defaults, strict YAML
// loading and validation with messages that name the field and the problem.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole gateway configuration. It is read-only once loaded.
type Config struct {
	// Listen is the gateway's address, host:port. Default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// MaxBodyBytes bounds a request body, and a compressed body once
	// inflated; larger bodies get 413. Default 4 MiB.
	MaxBodyBytes int `yaml:"max_body_bytes"`
	// MaxJSONDepth bounds how deeply arrays and objects nest in a request
	// body; a deeper body gets 400 before it is parsed. Default 64: chat
	// requests nest about 6 deep, JSON schemas in tools rarely past 20.
	MaxJSONDepth int `yaml:"max_json_depth"`
	// Server bounds what a client connection may hold (both listeners).
	Server Server `yaml:"server"`
	// Tiers are ordered from cheapest to most capable. The first is the tier
	// the cascade serves on by default, the last the one it escalates to.
	Tiers    []Tier   `yaml:"tiers"`
	Routing  Routing  `yaml:"routing"`
	Fallback Fallback `yaml:"fallback"`
	Timeouts Timeouts `yaml:"timeouts"`
	Retries  int      `yaml:"retries"`
	Breaker  Breaker  `yaml:"breaker"`
	Redis    Redis    `yaml:"redis"`
	Admin    Admin    `yaml:"admin"`
	// Recorder tunes the asynchronous request recorder (Redis).
	Recorder  Recorder  `yaml:"recorder"`
	Telemetry Telemetry `yaml:"telemetry"`
	// Scrape reads each endpoint's Prometheus /metrics for its load.
	Scrape Scrape `yaml:"scrape"`
}

// Tier is a pool of interchangeable OpenAI-compatible endpoints.
type Tier struct {
	Name      string     `yaml:"name"`
	Endpoints []Endpoint `yaml:"endpoints"`
	// Cost prices the tier's tokens in dollars and energy; see cost.go.
	Cost Cost `yaml:"cost"`
	// MaxContextTokens is the context window of the tier's models (prompt
	// plus output). A request whose estimated prompt plus max_tokens exceeds
	// it is never sent to the tier. 0 means unknown (unlimited).
	MaxContextTokens int `yaml:"max_context_tokens"`
}

// Endpoint is one upstream model server.
type Endpoint struct {
	// URL is the base URL up to and including /v1, e.g. http://10.0.0.5:8000/v1.
	URL string `yaml:"url" secret:"userinfo"`
	// Model is the model name the upstream expects.
	Model string `yaml:"model"`
	// APIKeyEnv names an environment variable holding the bearer token, if any.
	// The key itself never appears in the config file or in logs.
	APIKeyEnv string `yaml:"api_key_env"`
	// Weight scales the endpoint's share of traffic. Unset (or 0) means 1.
	Weight int `yaml:"weight"`
}

// APIKey returns the endpoint's key from the environment, or "".
func (e Endpoint) APIKey() string {
	if e.APIKeyEnv == "" {
		return ""
	}
	return os.Getenv(e.APIKeyEnv)
}

// Routing controls which tier a request with model "auto" (or an alias) goes to.
type Routing struct {
	// Mode is how "auto" and aliases without a mode of their own decide:
	// route (on the prompt alone), cascade (the cheapest tier answers first
	// and its answer is judged) or hybrid (the prompt settles the clear
	// cases, the band between is cascaded). Default route.
	Mode string `yaml:"mode"`
	// Cascade tunes the cascade and hybrid modes.
	Cascade Cascade `yaml:"cascade"`
	// Threshold: a score at or above it escalates. Default 0.75: with the built-in
	// scorer, whose score is a percentile, about a quarter of traffic escalates.
	Threshold float64 `yaml:"threshold"`
	// TargetEscalationRate, when above 0, replaces the fixed threshold: the
	// threshold follows the recent score distribution so that about this share
	// of requests escalates. Within (0, 1).
	TargetEscalationRate float64 `yaml:"target_escalation_rate"`
	// Calibration tunes the target-rate mode.
	Calibration Calibration `yaml:"calibration"`
	// Scorer is "learned" (default: the model built into the binary, or
	// ModelFile) or "length" (prompt length only, a baseline).
	Scorer string `yaml:"scorer"`
	// ModelFile replaces the built-in learned model (written by cascade train).
	ModelFile string `yaml:"model_file"`
	// AllowTierHeader lets a client pin a tier with the X-Cascade-Tier header.
	AllowTierHeader bool `yaml:"allow_tier_header"`
	// Aliases are extra model names that let the cascade decide, each with its
	// own policy. "auto" is always one. A plain string is an alias with mode auto.
	Aliases []Alias `yaml:"aliases"`
}

// Calibration tunes how the threshold tracks a target escalation rate.
type Calibration struct {
	// Window is how many recent scores the threshold is computed from.
	// Default 10000.
	Window int `yaml:"window"`
	// Shared merges the score histograms of all gateways using the same Redis
	// and prefix, so a fleet holds the target together. Default true; it has
	// no effect without redis.url.
	Shared bool `yaml:"shared"`
	// SyncEvery is how often a gateway exchanges its histogram through Redis.
	// Default 1s.
	SyncEvery time.Duration `yaml:"sync_every"`
}

// Alias is a model name with its own routing policy.
type Alias struct {
	Name string `yaml:"name"`
	// Mode is "auto" (routing.mode decides; default), "route", "cascade" or
	// "hybrid" (that mode for this alias), "never" (never escalates: serves
	// on the cheapest tier) or "always" (always on the most capable).
	Mode string `yaml:"mode"`
	// Threshold, if set, gives this alias (mode auto) its own fixed threshold,
	// also when routing follows a target rate; its requests then do not feed
	// the calibration.
	Threshold *float64 `yaml:"threshold"`
}

// UnmarshalYAML accepts a plain string as an alias with mode auto.
func (a *Alias) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		a.Name = n.Value
		return nil
	}
	type plain Alias
	return n.Decode((*plain)(a))
}

// Fallback says whether a request may move to another tier when its own tier
// has no endpoint available.
type Fallback struct {
	// SmallToLarge: a request for a cheaper tier may go to a more capable one.
	// Default true.
	SmallToLarge bool `yaml:"small_to_large"`
	// LargeToSmall: a request for a more capable tier may be served, degraded,
	// by a cheaper one. Default true.
	LargeToSmall bool `yaml:"large_to_small"`
}

// Timeouts for upstream calls. Unset fields take the defaults below.
type Timeouts struct {
	Connect    time.Duration `yaml:"connect"`     // default 2s
	FirstByte  time.Duration `yaml:"first_byte"`  // default 60s: a large prompt's prefill can be slow
	StreamIdle time.Duration `yaml:"stream_idle"` // default 30s between two chunks
	Total      time.Duration `yaml:"total"`       // default 10m: long generations are legitimate

	// AttemptsTotal bounds the wait for response headers across every retry
	// and fallback tier of a request; FirstByte bounds each attempt within
	// it. Default 30s: past that a client is better told to retry than left
	// waiting, however many endpoints were tried.
	AttemptsTotal time.Duration `yaml:"attempts_total"`
}

// Breaker configures the per-endpoint circuit breaker.
type Breaker struct {
	// ConsecutiveFailures trips the breaker. Default 5.
	ConsecutiveFailures uint32 `yaml:"consecutive_failures"`
	// OpenFor is how long it stays open before letting a probe through. Default 10s.
	OpenFor time.Duration `yaml:"open_for"`
	// HalfOpenRequests is how many probes are let through half-open. Default 1.
	HalfOpenRequests uint32 `yaml:"half_open_requests"`
}

// Redis is where records and rollups go. An empty URL means no Redis.
type Redis struct {
	URL    string `yaml:"url" secret:"userinfo"`
	Prefix string `yaml:"prefix"` // default "cascade:"
}

// Admin protects /admin/*. TokenEnv names the environment variable holding the
// bearer token; with none set the admin API answers 401 to everyone.
type Admin struct {
	TokenEnv string `yaml:"token_env"`
	// Listen, if set, serves /admin/*, /dashboard and /metrics on a separate
	// address instead of the API's.
	Listen string `yaml:"listen"`
}

// Token returns the admin bearer token from the environment, or "".
func (a Admin) Token() string {
	if a.TokenEnv == "" {
		return ""
	}
	return os.Getenv(a.TokenEnv)
}

// Recorder tunes the asynchronous Redis recorder. Zero fields take defaults.
type Recorder struct {
	// QueueSize bounds records waiting for Redis; beyond it records are
	// dropped and counted. Default 65536.
	QueueSize int `yaml:"queue_size"`
	// FlushInterval is the longest a record waits before a flush. Default 200ms.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// BatchSize flushes early when this many records are waiting. Default 512.
	BatchSize int `yaml:"batch_size"`
	// StreamMaxLen caps each per-day request stream (approximate). Default 1000000.
	StreamMaxLen int64 `yaml:"stream_max_len"`
	// Retention is how long streams and rollups are kept. Default 720h (30 days).
	Retention time.Duration `yaml:"retention"`
}

// Telemetry configures OpenTelemetry. The standard OTEL_EXPORTER_OTLP_*
// environment variables apply as well.
type Telemetry struct {
	// ServiceName is the resource's service.name. Default "cascade".
	ServiceName string `yaml:"service_name"`
	// OTLPEndpoint (host:port or URL) turns on OTLP export of traces and
	// metrics; empty means OTEL_EXPORTER_OTLP_ENDPOINT, if set, else none.
	OTLPEndpoint string `yaml:"otlp_endpoint" secret:"userinfo"`
	// OTLPProtocol is "grpc" or "http/protobuf"; empty means
	// OTEL_EXPORTER_OTLP_PROTOCOL, else grpc.
	OTLPProtocol string `yaml:"otlp_protocol"`
	// SampleRatio is the share of traces sampled (parent-based). Default 1.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// CaptureContent records prompt and answer text on spans. Default false.
	CaptureContent bool `yaml:"capture_content"`
	// Prometheus serves GET /metrics. Default true.
	Prometheus bool `yaml:"prometheus"`
}

// Scrape reads backends' Prometheus metrics (vLLM, TGI, llama.cpp) for their
// queue depth, off the request path.
type Scrape struct {
	// Interval between scrapes of each endpoint. Unset (or 0) means 5s;
	// negative disables.
	Interval time.Duration `yaml:"interval"`
	// Path is the metrics path relative to the endpoint's host. Default /metrics.
	Path string `yaml:"path"`
}

// Server bounds the client side of each connection, on the API and the
// admin listener alike. A request that breaks a limit is answered (408, 431)
// where HTTP allows it, and its connection closed.
type Server struct {
	// ReadHeaderTimeout is how long a client may take to send a request's
	// line and headers, counted from the connection's opening or, on a
	// keep-alive connection, from the request's first byte. Default 10s, as
	// hardened reverse proxies do: a slow-header (slowloris) client holds a
	// connection no longer.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// ReadBodyTimeout is how long a client may take to send a request's
	// body once its headers are in. Default 60s: a 4 MiB body at 1 Mbit/s
	// takes 34s.
	ReadBodyTimeout time.Duration `yaml:"read_body_timeout"`
	// IdleTimeout closes a keep-alive connection that sends no new request
	// for this long. Default 120s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxHeaderBytes bounds a request's line and headers together; larger
	// ones get 431. It is also each connection's read buffer. Default 16384.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
}

// Default returns a configuration with every default filled and no tiers.
func Default() Config {
	return Config{
		Listen:       "127.0.0.1:8080",
		MaxBodyBytes: 4 << 20,
		MaxJSONDepth: 64,
		Server: Server{ReadHeaderTimeout: 10 * time.Second, ReadBodyTimeout: 60 * time.Second,
			IdleTimeout: 120 * time.Second, MaxHeaderBytes: 16 << 10},
		Routing: Routing{Threshold: 0.75, Scorer: "learned", Mode: ModeRoute, Cascade: defaultCascade(),
			Calibration: Calibration{Window: 10000, Shared: true, SyncEvery: time.Second}},
		Fallback: Fallback{SmallToLarge: true, LargeToSmall: true},
		Timeouts: Timeouts{
			Connect:    2 * time.Second,
			FirstByte:  60 * time.Second,
			StreamIdle: 30 * time.Second,
			Total:      10 * time.Minute,

			AttemptsTotal: 30 * time.Second,
		},
		Retries: 2,
		Breaker: Breaker{ConsecutiveFailures: 5, OpenFor: 10 * time.Second, HalfOpenRequests: 1},
		Redis:   Redis{Prefix: "cascade:"},
		Recorder: Recorder{QueueSize: 65536, FlushInterval: 200 * time.Millisecond, BatchSize: 512,
			StreamMaxLen: 1_000_000, Retention: 30 * 24 * time.Hour},
		Telemetry: Telemetry{ServiceName: "cascade", Prometheus: true},
		Scrape:    Scrape{Interval: 5 * time.Second, Path: "/metrics"},
	}
}

// Parse decodes YAML strictly (unknown keys are errors) over the defaults,
// fills the defaults that depend on the file (per endpoint, per tier) and
// validates the result. Consumers read every field as it is: none re-defaults.
func Parse(data []byte) (*Config, error) {
	c := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config: %w", err)
	}
	c.fill()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// LoadFile reads and parses a config file.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// defaultPUE is a data centre's power usage effectiveness when a GPU profile
// gives none: 1.2 is typical of a modern hyperscale facility.
const defaultPUE = 1.2

// fill sets what Default cannot: defaults inside lists (endpoints, tiers,
// aliases) and fields a file may have set to their zero value where zero is
// documented to mean the default.
func (c *Config) fill() {
	d := Default()
	for i := range c.Tiers {
		t := &c.Tiers[i]
		for j := range t.Endpoints {
			if t.Endpoints[j].Weight == 0 {
				t.Endpoints[j].Weight = 1
			}
		}
		if g := t.Cost.GPU; g != nil && g.PUE == 0 {
			g.PUE = defaultPUE
		}
	}
	for i := range c.Routing.Aliases {
		if c.Routing.Aliases[i].Mode == "" {
			c.Routing.Aliases[i].Mode = "auto"
		}
	}
	if c.Routing.Scorer == "" {
		c.Routing.Scorer = d.Routing.Scorer
	}
	if c.Redis.Prefix == "" {
		c.Redis.Prefix = d.Redis.Prefix
	}
	if c.Routing.Calibration.Window == 0 {
		c.Routing.Calibration.Window = d.Routing.Calibration.Window
	}
	if c.Routing.Calibration.SyncEvery == 0 {
		c.Routing.Calibration.SyncEvery = d.Routing.Calibration.SyncEvery
	}
	if c.Scrape.Interval == 0 {
		c.Scrape.Interval = d.Scrape.Interval
	}
	if c.Scrape.Path == "" {
		c.Scrape.Path = d.Scrape.Path
	}
}

// Validate checks cross-field rules and reports every problem it finds.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if err := checkHostPort(c.Listen); err != nil {
		bad("listen", "%v", err)
	}
	if c.Admin.Listen != "" {
		if err := checkHostPort(c.Admin.Listen); err != nil {
			bad("admin.listen", "%v", err)
		} else if c.Admin.Listen == c.Listen {
			bad("admin.listen", "%q is the API's listen address; leave it empty to serve /admin there", c.Admin.Listen)
		}
	}
	if c.MaxBodyBytes <= 0 {
		bad("max_body_bytes", "must be positive, got %d", c.MaxBodyBytes)
	}
	if c.MaxJSONDepth < 2 || c.MaxJSONDepth > 10000 {
		// 2: a request object holding an array; 10000: encoding/json's own limit.
		bad("max_json_depth", "must be within [2, 10000], got %d", c.MaxJSONDepth)
	}
	if c.Server.MaxHeaderBytes < 4096 {
		bad("server.max_header_bytes", "must be at least 4096, got %d", c.Server.MaxHeaderBytes)
	}
	if len(c.Tiers) == 0 {
		bad("tiers", "at least one tier is required")
	}
	names := map[string]string{"auto": "routing alias"}
	for i, t := range c.Tiers {
		f := fmt.Sprintf("tiers[%d]", i)
		if t.Name == "" {
			bad(f+".name", "must not be empty")
		} else if prev, dup := names[t.Name]; dup {
			bad(f+".name", "%q is already used as a %s", t.Name, prev)
		} else {
			names[t.Name] = "tier name"
		}
		if t.MaxContextTokens < 0 {
			bad(f+".max_context_tokens", "must not be negative (0: unknown), got %d", t.MaxContextTokens)
		}
		if len(t.Endpoints) == 0 {
			bad(f+".endpoints", "tier %q needs at least one endpoint", t.Name)
		}
		for j, e := range t.Endpoints {
			ef := fmt.Sprintf("%s.endpoints[%d]", f, j)
			u, err := url.Parse(e.URL)
			switch {
			case e.URL == "":
				bad(ef+".url", "must not be empty")
			case err != nil:
				bad(ef+".url", "%v", err)
			case u.Scheme != "http" && u.Scheme != "https":
				bad(ef+".url", "scheme must be http or https, got %q", u.Scheme)
			case u.Host == "":
				bad(ef+".url", "%q has no host", e.URL)
			}
			if e.Model == "" {
				bad(ef+".model", "must not be empty")
			}
			if e.Weight < 1 {
				bad(ef+".weight", "must be at least 1, got %d", e.Weight)
			}
		}
	}
	for i, a := range c.Routing.Aliases {
		f := fmt.Sprintf("routing.aliases[%d]", i)
		if strings.TrimSpace(a.Name) == "" {
			bad(f+".name", "must not be empty")
		} else if prev, dup := names[a.Name]; dup && a.Name != "auto" {
			bad(f+".name", "%q is already used as a %s", a.Name, prev)
		} else {
			names[a.Name] = "routing alias"
		}
		if a.Threshold != nil && (*a.Threshold < 0 || *a.Threshold > 1) {
			bad(f+".threshold", "must be within [0, 1], got %g", *a.Threshold)
		}
	}
	if c.Routing.Threshold < 0 || c.Routing.Threshold > 1 {
		bad("routing.threshold", "must be within [0, 1], got %g", c.Routing.Threshold)
	}
	if r := c.Routing.TargetEscalationRate; r < 0 || r >= 1 {
		bad("routing.target_escalation_rate", "must be within (0, 1), or 0 for a fixed threshold; got %g", r)
	}
	if c.Routing.Calibration.Window < 0 {
		bad("routing.calibration.window", "must not be negative, got %d", c.Routing.Calibration.Window)
	}
	c.validateCascade(bad)
	switch c.Routing.Scorer {
	case "", "learned", "length":
	default:
		bad("routing.scorer", "must be learned or length, got %q", c.Routing.Scorer)
	}
	for i, t := range c.Tiers {
		c.validateCost(fmt.Sprintf("tiers[%d].cost", i), t.Cost, bad)
	}
	if c.Recorder.QueueSize <= 0 {
		bad("recorder.queue_size", "must be positive, got %d", c.Recorder.QueueSize)
	}
	if c.Recorder.BatchSize <= 0 {
		bad("recorder.batch_size", "must be positive, got %d", c.Recorder.BatchSize)
	}
	if c.Recorder.FlushInterval <= 0 {
		bad("recorder.flush_interval", "must be a positive duration, got %v", c.Recorder.FlushInterval)
	}
	if c.Recorder.Retention <= 0 {
		bad("recorder.retention", "must be a positive duration, got %v", c.Recorder.Retention)
	}
	switch c.Telemetry.OTLPProtocol {
	case "", "grpc", "http/protobuf":
	default:
		bad("telemetry.otlp_protocol", "must be grpc or http/protobuf, got %q", c.Telemetry.OTLPProtocol)
	}
	if r := c.Telemetry.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		bad("telemetry.sample_ratio", "must be within [0, 1], got %g", *r)
	}
	if c.Scrape.Interval == 0 {
		bad("scrape.interval", "must not be 0: a positive interval, or negative to disable scraping")
	}
	if !strings.HasPrefix(c.Scrape.Path, "/") {
		bad("scrape.path", "must start with /, got %q", c.Scrape.Path)
	}
	if c.Retries < 0 || c.Retries > 10 {
		bad("retries", "must be within [0, 10], got %d", c.Retries)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"timeouts.connect", c.Timeouts.Connect}, {"timeouts.first_byte", c.Timeouts.FirstByte},
		{"timeouts.stream_idle", c.Timeouts.StreamIdle}, {"timeouts.total", c.Timeouts.Total},
		{"timeouts.attempts_total", c.Timeouts.AttemptsTotal},
		{"breaker.open_for", c.Breaker.OpenFor},
		{"server.read_header_timeout", c.Server.ReadHeaderTimeout}, {"server.read_body_timeout", c.Server.ReadBodyTimeout},
		{"server.idle_timeout", c.Server.IdleTimeout}, {"routing.calibration.sync_every", c.Routing.Calibration.SyncEvery}} {
		if d.v <= 0 {
			bad(d.name, "must be a positive duration, got %v", d.v)
		}
	}
	if c.Breaker.ConsecutiveFailures == 0 {
		bad("breaker.consecutive_failures", "must be at least 1")
	}
	if c.Redis.URL != "" {
		if _, err := url.Parse(c.Redis.URL); err != nil || !strings.HasPrefix(c.Redis.URL, "redis") {
			bad("redis.url", "must be a redis:// or rediss:// URL, got %q", c.Redis.URL)
		}
	}
	return errors.Join(errs...)
}

// checkHostPort accepts host:port with a numeric port, as net.Listen takes
// it (an empty host means every interface).
func checkHostPort(addr string) error {
	if addr == "" {
		return errors.New("must not be empty; use host:port, e.g. 127.0.0.1:8080")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port, e.g. 127.0.0.1:8080", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port must be a number within [0, 65535]", addr)
	}
	return nil
}
