package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"gopkg.in/yaml.v3"

	"github.com/cascade-gateway/cascade/backends"
	"github.com/cascade-gateway/cascade/config"
)

// operator is the gateway's operator surface: reload bookkeeping, the config
// file it reloads from, backend scraping and the optional separate admin
// listener.
type operator struct {
	applyMu sync.Mutex // serialises Apply: one snapshot build at a time

	mu      sync.Mutex // protects the fields below
	path    string     // config file for POST /admin/reload; "" for none
	last    ReloadResult
	applied bool // the first configuration is in

	reloads metric.Int64Counter
	scraper *backends.Scraper

	app    *fiber.App // separate admin listener; nil when admin.listen is unset
	listen string
}

// ReloadResult is the outcome of the last attempt to change the running
// configuration (the initial configuration counts as the first).
type ReloadResult struct {
	Time time.Time `json:"time"`
	OK   bool      `json:"ok"`
	// Error is why the configuration was rejected; the previous one stayed.
	Error string `json:"error,omitempty"`
	// Version is the sha256 of the configuration (see ConfigVersion); empty
	// when the file did not parse.
	Version string `json:"version,omitempty"`
	// RestartRequired lists settings that changed but only take effect when
	// the gateway restarts (listen addresses, body limit, upstream connect
	// and first-byte timeouts, redis, recorder, telemetry).
	RestartRequired []string `json:"restart_required,omitempty"`
}

// initOps prepares the operator surface; New calls it before the first Apply.
func (g *Gateway) initOps(cfg *config.Config) {
	g.ops.scraper = backends.NewScraper()
	mp := g.opts.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	c, err := mp.Meter("github.com/cascade-gateway/cascade/gateway").Int64Counter("cascade.config.reloads",
		metric.WithDescription("Configuration reloads by result (success: applied; failure: rejected, the previous configuration stays)."))
	if err != nil {
		otel.Handle(err)
	}
	g.ops.reloads = c
	if cfg.Admin.Listen != "" {
		g.ops.listen = cfg.Admin.Listen
		g.ops.app = g.newApp(cfg)
		g.ops.app.Use(g.requestID)
	}
}

// opsRouter is where operator pages go: /admin, /dashboard and /metrics. It
// is the separate admin app when admin.listen is set, else the API's app.
func (g *Gateway) opsRouter() fiber.Router {
	if g.ops.app != nil {
		return g.ops.app
	}
	return g.app
}

// AdminApp returns the app serving the admin listener, or nil when the
// admin API shares the API's listener.
func (g *Gateway) AdminApp() *fiber.App { return g.ops.app }

// listenAdmin starts the separate admin listener, if configured.
func (g *Gateway) listenAdmin() error {
	if g.ops.app == nil {
		return nil
	}
	ln, err := net.Listen("tcp", g.ops.listen)
	if err != nil {
		return fmt.Errorf("admin.listen: cannot bind %s: %w", g.ops.listen, err)
	}
	go g.ops.app.Listener(ln)
	return nil
}

// closeOps stops scraping and the admin listener.
func (g *Gateway) closeOps(ctx context.Context) error {
	g.ops.scraper.Stop()
	if g.ops.app != nil {
		return g.ops.app.ShutdownWithContext(ctx)
	}
	return nil
}

// afterApply runs at the end of every Apply with its result: it points the
// scraper at the new endpoints and records the outcome.
func (g *Gateway) afterApply(cfg *config.Config, prev *snapshot, err error) {
	res := ReloadResult{Time: g.now(), OK: err == nil}
	if cfg != nil {
		res.Version = ConfigVersion(cfg)
	}
	if err != nil {
		res.Error = err.Error()
	} else {
		s := g.snap.Load()
		var eps []*backends.Endpoint
		for _, t := range s.tiers {
			eps = append(eps, s.pools[t].Endpoints...)
		}
		g.ops.scraper.Update(eps, cfg.Scrape)
		if prev != nil {
			res.RestartRequired = restartRequired(prev.cfg, cfg)
		}
	}
	g.recordReload(res)
}

// recordReload remembers res and counts it, except for the initial
// configuration, which is not a reload.
func (g *Gateway) recordReload(res ReloadResult) {
	g.ops.mu.Lock()
	first := !g.ops.applied
	if res.OK {
		g.ops.applied = true
	}
	g.ops.last = res
	g.ops.mu.Unlock()
	if first || g.ops.reloads == nil {
		return
	}
	result := "success"
	if !res.OK {
		result = "failure"
	}
	g.ops.reloads.Add(context.Background(), 1, metric.WithAttributes(attribute.String("result", result)))
}

// LastReload is the outcome of the last configuration change attempted.
func (g *Gateway) LastReload() ReloadResult {
	g.ops.mu.Lock()
	defer g.ops.mu.Unlock()
	return g.ops.last
}

// SetConfigFile names the file POST /admin/reload (and ReloadFile) reads.
func (g *Gateway) SetConfigFile(path string) {
	g.ops.mu.Lock()
	g.ops.path = path
	g.ops.mu.Unlock()
}

// ConfigFile is the file set by SetConfigFile, or "".
func (g *Gateway) ConfigFile() string {
	g.ops.mu.Lock()
	defer g.ops.mu.Unlock()
	return g.ops.path
}

// ErrNoConfigFile is returned by ReloadFile when the gateway was not started
// from a file.
var ErrNoConfigFile = fmt.Errorf("the gateway was not started from a config file, so there is nothing to reload; start it with cascade serve -config FILE")

// ReloadFile re-reads the config file and applies it. A file that does not
// parse or validate, or a configuration that cannot be built, leaves the
// running one in place; either way the outcome is recorded (LastReload,
// GET /admin/config, cascade_config_reloads_total).
func (g *Gateway) ReloadFile() (ReloadResult, error) {
	path := g.ConfigFile()
	if path == "" {
		return ReloadResult{}, ErrNoConfigFile
	}
	cfg, err := config.LoadFile(path)
	if err != nil {
		res := ReloadResult{Time: g.now(), Error: err.Error()}
		g.recordReload(res)
		return res, err
	}
	// Addresses the process already listens on stay what they are.
	cur := g.snap.Load().cfg
	cfg.Listen, cfg.Admin.Listen = cur.Listen, cur.Admin.Listen
	err = g.Apply(cfg)
	return g.LastReload(), err
}

// ConfigVersion is "sha256:" and the hex SHA-256 of cfg's canonical YAML
// encoding: equal configurations have equal versions whatever their
// formatting or comments.
func ConfigVersion(cfg *config.Config) string {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// restartRequired names settings that differ between old and new but are
// fixed when the gateway starts.
func restartRequired(old, cur *config.Config) []string {
	var out []string
	diff := func(name string, a, b any) {
		ya, _ := yaml.Marshal(a)
		yb, _ := yaml.Marshal(b)
		if string(ya) != string(yb) {
			out = append(out, name)
		}
	}
	diff("listen", old.Listen, cur.Listen)
	diff("admin.listen", old.Admin.Listen, cur.Admin.Listen)
	diff("server.read_header_timeout", old.Server.ReadHeaderTimeout, cur.Server.ReadHeaderTimeout)
	diff("server.idle_timeout", old.Server.IdleTimeout, cur.Server.IdleTimeout)
	diff("server.max_header_bytes", old.Server.MaxHeaderBytes, cur.Server.MaxHeaderBytes)
	diff("timeouts.connect", old.Timeouts.Connect, cur.Timeouts.Connect)
	diff("timeouts.first_byte", old.Timeouts.FirstByte, cur.Timeouts.FirstByte)
	diff("redis", old.Redis, cur.Redis)
	diff("recorder", old.Recorder, cur.Recorder)
	diff("telemetry", old.Telemetry, cur.Telemetry)
	return out
}

// adminRoutes registers /admin/* behind the bearer token.
func (g *Gateway) adminRoutes() {
	a := g.opsRouter().Group("/admin", g.adminAuth)
	a.Get("/config", g.adminConfig)
	a.Get("/backends", g.adminBackends)
	a.Post("/reload", g.adminReload)
	g.adminExtraRoutes(a)
}

// adminAuth lets a request through only with the configured bearer token.
func (g *Gateway) adminAuth(c *fiber.Ctx) error {
	ac := g.snap.Load().cfg.Admin
	want := ac.Token()
	if want == "" {
		msg := "the admin API is disabled because no admin token is configured: set admin.token_env in the config to the name of an environment variable holding the token"
		if ac.TokenEnv != "" {
			msg = "the admin API is disabled because the environment variable " + ac.TokenEnv + " named by admin.token_env is empty or unset"
		}
		return unauthorized(c, msg)
	}
	h := c.Get(fiber.HeaderAuthorization)
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return unauthorized(c, "the admin API needs the admin token: send the header Authorization: Bearer <token>")
	}
	if !tokenEqual(strings.TrimSpace(h[7:]), want) {
		return unauthorized(c, "the admin token is wrong")
	}
	return c.Next()
}

func unauthorized(c *fiber.Ctx, msg string) error {
	c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="cascade-admin"`)
	return writeError(c, &apiError{Status: fiber.StatusUnauthorized, Type: "invalid_request_error", Code: "invalid_api_key", Message: msg})
}

// tokenEqual compares in constant time; hashing first hides the length.
func tokenEqual(got, want string) bool {
	a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// adminConfig serves GET /admin/config: the running configuration with
// secrets redacted, its version and the last reload's outcome.
// ?format=yaml answers YAML instead of JSON.
func (g *Gateway) adminConfig(c *fiber.Ctx) error {
	s := g.snap.Load()
	doc, err := redactedConfig(s.cfg)
	if err != nil {
		return writeError(c, err)
	}
	body := map[string]any{
		"version":     ConfigVersion(s.cfg),
		"config_file": g.ConfigFile(),
		"config":      doc,
		"last_reload": g.LastReload(),
	}
	if c.Query("format") == "yaml" {
		last := g.LastReload()
		lr := map[string]any{"time": last.Time.Format(time.RFC3339Nano), "ok": last.OK}
		if last.Error != "" {
			lr["error"] = last.Error
		}
		if last.Version != "" {
			lr["version"] = last.Version
		}
		if len(last.RestartRequired) > 0 {
			lr["restart_required"] = last.RestartRequired
		}
		body["last_reload"] = lr
		b, err := yaml.Marshal(body)
		if err != nil {
			return writeError(c, err)
		}
		c.Set(fiber.HeaderContentType, "application/yaml")
		return c.Send(b)
	}
	return c.JSON(body)
}

// redacted replaces secret values in the config document.
const redacted = "REDACTED"

// redactedConfig is cfg, the effective configuration (every default
// filled), as a generic document with YAML key names, and the fields the
// config marks secret replaced. The struct tag secret:"true" replaces the
// whole value; secret:"userinfo" (URLs: endpoints, redis.url, the OTLP
// endpoint) only a password in the URL. Names of environment variables
// (api_key_env, token_env) are no secrets; their values are never in the
// config.
func redactedConfig(cfg *config.Config) (map[string]any, error) {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	redactSecrets(reflect.TypeOf(cfg), doc)
	return doc, nil
}

// redactSecrets walks doc, the YAML document of a value of type t, and
// redacts the fields t's struct tags mark secret.
func redactSecrets(t reflect.Type, doc any) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := doc.(map[string]any)
		if !ok {
			return
		}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			v, ok := m[name]
			if !ok {
				continue
			}
			switch f.Tag.Get("secret") {
			case "true":
				if s, isStr := v.(string); !isStr || s != "" {
					m[name] = redacted
				}
			case "userinfo":
				if s, isStr := v.(string); isStr {
					m[name] = redactURL(s)
				}
			default:
				redactSecrets(f.Type, v)
			}
		}
	case reflect.Slice, reflect.Array:
		if l, ok := doc.([]any); ok {
			for _, v := range l {
				redactSecrets(t.Elem(), v)
			}
		}
	case reflect.Map:
		if m, ok := doc.(map[string]any); ok {
			for _, v := range m {
				redactSecrets(t.Elem(), v)
			}
		}
	}
}

// redactURL hides the password (or a lone user token) in a URL's userinfo.
func redactURL(s string) string {
	if !strings.Contains(s, "@") || !strings.Contains(s, "://") {
		return s
	}
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), redacted)
	} else {
		u.User = url.User(redacted)
	}
	return u.String()
}

// backendJSON is one endpoint in GET /admin/backends.
type backendJSON struct {
	Tier      string   `json:"tier"`
	URL       string   `json:"url"`
	Model     string   `json:"model"`
	Weight    int      `json:"weight"`
	Available bool     `json:"available"`
	Breaker   string   `json:"breaker"`
	InFlight  int64    `json:"in_flight"`
	LatencyMS float64  `json:"latency_ms"`
	ErrorRate float64  `json:"error_rate"`
	Queue     int64    `json:"queue"`
	Load      loadJSON `json:"load"`
	// Logprobs says whether the endpoint's answers carried token logprobs
	// when the cascade asked for them ("yes", "no"; "" before any).
	Logprobs     string  `json:"logprobs,omitempty"`
	CoolDownSecs float64 `json:"cool_down_s,omitempty"`
}

type loadJSON struct {
	Running      float64 `json:"running"`
	Waiting      float64 `json:"waiting"`
	KVCacheUsage float64 `json:"kv_cache_usage"`
	Server       string  `json:"server"`
	ScrapedAt    *string `json:"scraped_at"`
	Error        string  `json:"error"`
}

// adminBackends serves GET /admin/backends: every endpoint of the running
// configuration, cheapest tier first.
func (g *Gateway) adminBackends(c *fiber.Ctx) error {
	s := g.snap.Load()
	out := struct {
		Endpoints []backendJSON `json:"endpoints"`
	}{Endpoints: []backendJSON{}}
	for _, t := range s.tiers {
		for _, e := range s.pools[t].Endpoints {
			l := e.Load()
			lj := loadJSON{Running: l.Running, Waiting: l.Waiting, KVCacheUsage: l.KVCacheUsage, Server: l.Server, Error: l.Err}
			if !l.ScrapedAt.IsZero() {
				ts := l.ScrapedAt.UTC().Format(time.RFC3339Nano)
				lj.ScrapedAt = &ts
			}
			out.Endpoints = append(out.Endpoints, backendJSON{
				Tier: e.Tier, URL: redactURL(e.URL), Model: e.Model, Weight: e.Weight,
				Available: e.Available(), Breaker: e.BreakerState().String(),
				InFlight: e.InFlight(), LatencyMS: e.LatencyMS(), ErrorRate: e.ErrorRate(),
				Queue: e.Queue(), Load: lj, Logprobs: e.Logprobs(), CoolDownSecs: e.CoolDownLeft().Seconds(),
			})
		}
	}
	return c.JSON(out)
}

// adminReload serves POST /admin/reload: re-read the config file the gateway
// was started with and apply it.
func (g *Gateway) adminReload(c *fiber.Ctx) error {
	res, err := g.ReloadFile()
	if err == ErrNoConfigFile {
		return writeError(c, &apiError{Status: fiber.StatusConflict, Type: "invalid_request_error", Code: "no_config_file", Message: err.Error()})
	}
	if err != nil {
		return writeError(c, &apiError{Status: fiber.StatusUnprocessableEntity, Type: "invalid_request_error", Code: "invalid_config",
			Message: "reload failed, the running configuration is unchanged: " + err.Error()})
	}
	return c.JSON(fiber.Map{"reloaded": true, "version": res.Version, "last_reload": res})
}
