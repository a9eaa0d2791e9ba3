// Package config holds Cascade's configuration: plain structs, defaults, strict YAML
// loading and validation with messages that name the field and the problem.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole gateway configuration. It is read-only once loaded.
type Config struct {
	// Listen is the gateway's address. Default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// MaxBodyBytes bounds a request body; larger bodies get 413. Default 4 MiB.
	MaxBodyBytes int `yaml:"max_body_bytes"`
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
}

// Tier is a pool of interchangeable OpenAI-compatible endpoints.
type Tier struct {
	Name      string     `yaml:"name"`
	Endpoints []Endpoint `yaml:"endpoints"`
}

// Endpoint is one upstream model server.
type Endpoint struct {
	// URL is the base URL up to and including /v1, e.g. http://10.0.0.5:8000/v1.
	URL string `yaml:"url"`
	// Model is the model name the upstream expects.
	Model string `yaml:"model"`
	// APIKeyEnv names an environment variable holding the bearer token, if any.
	// The key itself never appears in the config file or in logs.
	APIKeyEnv string `yaml:"api_key_env"`
	// Weight scales the endpoint's share of traffic. 0 means 1.
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
	// Threshold: a score at or above it escalates. Default 0.5.
	Threshold float64 `yaml:"threshold"`
	// Aliases are extra model names that mean "let the cascade decide".
	// "auto" is always one.
	Aliases []string `yaml:"aliases"`
}

// Fallback says whether a request may move to another tier when its own tier
// has no endpoint available.
type Fallback struct {
	// SmallToLarge: a request for a cheaper tier may go to a more capable one.
	// Default true.
	SmallToLarge *bool `yaml:"small_to_large"`
	// LargeToSmall: a request for a more capable tier may be served, degraded,
	// by a cheaper one. Default true.
	LargeToSmall *bool `yaml:"large_to_small"`
}

// Timeouts for upstream calls. Zero fields take the defaults below.
type Timeouts struct {
	Connect    time.Duration `yaml:"connect"`     // default 2s
	FirstByte  time.Duration `yaml:"first_byte"`  // default 60s: a large prompt's prefill can be slow
	StreamIdle time.Duration `yaml:"stream_idle"` // default 30s between two chunks
	Total      time.Duration `yaml:"total"`       // default 10m: long generations are legitimate
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
	URL    string `yaml:"url"`
	Prefix string `yaml:"prefix"` // default "cascade:"
}

// Admin protects /admin/*. TokenEnv names the environment variable holding the
// bearer token; with none set the admin API answers 401 to everyone.
type Admin struct {
	TokenEnv string `yaml:"token_env"`
}

// Bool returns *b, or def when b is nil.
func Bool(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

// Default returns a configuration with every default filled and no tiers.
func Default() Config {
	return Config{
		Listen:       "127.0.0.1:8080",
		MaxBodyBytes: 4 << 20,
		Routing:      Routing{Threshold: 0.5},
		Timeouts: Timeouts{
			Connect:    2 * time.Second,
			FirstByte:  60 * time.Second,
			StreamIdle: 30 * time.Second,
			Total:      10 * time.Minute,
		},
		Retries: 2,
		Breaker: Breaker{ConsecutiveFailures: 5, OpenFor: 10 * time.Second, HalfOpenRequests: 1},
		Redis:   Redis{Prefix: "cascade:"},
	}
}

// Parse decodes YAML strictly (unknown keys are errors) over the defaults and
// validates the result.
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

func (c *Config) fill() {
	for i := range c.Tiers {
		for j := range c.Tiers[i].Endpoints {
			if c.Tiers[i].Endpoints[j].Weight == 0 {
				c.Tiers[i].Endpoints[j].Weight = 1
			}
		}
	}
	if c.Redis.Prefix == "" {
		c.Redis.Prefix = "cascade:"
	}
}

// Validate checks cross-field rules and reports every problem it finds.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if c.Listen == "" {
		bad("listen", "must not be empty")
	}
	if c.MaxBodyBytes <= 0 {
		bad("max_body_bytes", "must be positive, got %d", c.MaxBodyBytes)
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
			if e.Weight < 0 {
				bad(ef+".weight", "must not be negative, got %d", e.Weight)
			}
		}
	}
	for i, a := range c.Routing.Aliases {
		f := fmt.Sprintf("routing.aliases[%d]", i)
		if strings.TrimSpace(a) == "" {
			bad(f, "must not be empty")
		} else if prev, dup := names[a]; dup && a != "auto" {
			bad(f, "%q is already used as a %s", a, prev)
		} else {
			names[a] = "routing alias"
		}
	}
	if c.Routing.Threshold < 0 || c.Routing.Threshold > 1 {
		bad("routing.threshold", "must be within [0, 1], got %g", c.Routing.Threshold)
	}
	if c.Retries < 0 || c.Retries > 10 {
		bad("retries", "must be within [0, 10], got %d", c.Retries)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"timeouts.connect", c.Timeouts.Connect}, {"timeouts.first_byte", c.Timeouts.FirstByte},
		{"timeouts.stream_idle", c.Timeouts.StreamIdle}, {"timeouts.total", c.Timeouts.Total},
		{"breaker.open_for", c.Breaker.OpenFor}} {
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
