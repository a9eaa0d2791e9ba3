// Package gateway is Cascade's HTTP front: an OpenAI-compatible API on fiber
// that routes each request to a tier, relays the backend's answer and records
// what it cost.
package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/cascade-gateway/cascade/backends"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/router"
	"github.com/cascade-gateway/cascade/router/verify"
)

// Options are the gateway's collaborators. Zero values are usable.
type Options struct {
	// Recorder receives one record per request that reached a backend.
	// If nil, records are discarded.
	Recorder costing.Recorder
	// Redis is the shared Redis (records are written by Recorder; this
	// client serves reads such as /admin/stats). nil means none.
	Redis redis.UniversalClient
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// TracerProvider and MeterProvider receive the gateway's spans and
	// metrics (telemetry.go); nil means the otel globals.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Metrics, when set, serves GET /metrics (the Prometheus exporter's
	// handler, see cmd/cascade/otel.go).
	Metrics http.Handler
}

// Gateway serves the API. Its configuration is an immutable snapshot swapped
// atomically by Apply.
type Gateway struct {
	app      *fiber.App
	snap     atomic.Pointer[snapshot]
	registry *backends.Registry
	opts     Options
	tel      *telemetry // tracer and instruments (telemetry.go)
	ops      operator   // reloads, admin listener, scraping (admin.go)
	calib    *calibSync // shares the routing calibration through Redis (calibration.go)
	moves    moveLog    // fallback and degraded episodes in the log (episodes.go)
	// judgeCalib shares the verifier's calibration in the cascade modes.
	judgeCalib *calibSync
	// stopping is cancelled shortly before the shutdown grace ends: what is
	// still running then ends with an error event and a shutdown record
	// instead of being cut by the process exit.
	stopping context.Context
	stop     context.CancelFunc
}

// snapshot is everything a request needs, built once per configuration.
type snapshot struct {
	cfg    *config.Config
	policy *router.Policy
	pools  map[string]*backends.Pool
	tiers  []string         // cheapest first
	models map[string]route // every name a client may send as "model"
	// modelList is the prebuilt /v1/models body.
	modelList []byte
	tel       *telSets // metric attribute sets (telemetry.go)
	// pricer prices each record in dollars and energy.
	pricer *costing.Pricer
	// verifier judges cheap answers in the cascade and hybrid modes.
	verifier *verify.Verifier
}

// route is what a model name means.
type route struct {
	auto bool   // let the cascade decide
	tier string // pinned tier when !auto
}

// New builds a gateway for cfg.
func New(cfg *config.Config, opts Options) (*Gateway, error) {
	if opts.Recorder == nil {
		opts.Recorder = costing.Nop{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	g := &Gateway{
		registry: backends.NewRegistry(backends.NewClient(cfg.Timeouts)),
		opts:     opts,
	}
	g.stopping, g.stop = context.WithCancel(context.Background())
	tel, err := newTelemetry(g)
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	g.tel = tel
	g.initOps(cfg)
	if err := g.Apply(cfg); err != nil {
		g.ops.scraper.Stop()
		return nil, err
	}
	g.app = g.newApp(cfg)
	g.routes()
	id := newInstanceID()
	g.calib = startCalibSync(g, id, false)
	g.judgeCalib = startCalibSync(g, id, true)
	return g, nil
}

// newApp is a fiber app with the connection limits of cfg.Server. The header
// timeout and the buffer (which bounds the header size) are fixed for the
// process; the body timeout and size limit are read from the current
// snapshot when each request's headers are in, so a reload changes them.
//
// fasthttp has one read deadline per connection: ReadTimeout sets it when a
// request's first byte arrives (or the connection opens), HeaderReceived
// moves it once the headers are in. Between requests IdleTimeout applies.
func (g *Gateway) newApp(cfg *config.Config) *fiber.App {
	app := fiber.New(fiber.Config{
		BodyLimit:             cfg.MaxBodyBytes,
		DisableStartupMessage: true,
		ErrorHandler:          fiberErrorHandler,
		ReadTimeout:           cfg.Server.ReadHeaderTimeout,
		IdleTimeout:           cfg.Server.IdleTimeout,
		ReadBufferSize:        cfg.Server.MaxHeaderBytes,
	})
	app.Server().HeaderReceived = func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
		c := g.snap.Load().cfg
		return fasthttp.RequestConfig{ReadTimeout: c.Server.ReadBodyTimeout, MaxRequestBodySize: c.MaxBodyBytes}
	}
	return app
}

// App returns the fiber app, for Listen or Test.
func (g *Gateway) App() *fiber.App { return g.app }

// Listen binds the API's address and, when admin.listen is set, starts
// serving the admin listener. It returns the API's listener for Serve; on
// error nothing is left listening.
func (g *Gateway) Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: cannot bind %s: %w", addr, err)
	}
	if err := g.listenAdmin(); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve serves the API on ln (from Listen) until Shutdown.
func (g *Gateway) Serve(ln net.Listener) error { return g.app.Listener(ln) }

// Shutdown stops accepting requests and waits for in-flight ones (streams
// included) until ctx ends. Requests still running shortly before ctx's
// deadline (a tenth of the time left, between 50ms and 1s) are ended: a
// stream with an error event, a plain request with a 503, each recorded as
// shutdown.
func (g *Gateway) Shutdown(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		margin := min(max(left/10, 50*time.Millisecond), time.Second)
		t := time.AfterFunc(left-margin, g.stop)
		defer t.Stop()
	}
	go func() { <-ctx.Done(); g.stop() }()
	err := g.app.ShutdownWithContext(ctx)
	g.stop()
	g.calib.close(ctx)
	g.judgeCalib.close(ctx)
	if oerr := g.closeOps(ctx); err == nil {
		err = oerr
	}
	g.registry.Client().CloseIdle()
	return err
}

// Apply builds a complete snapshot from cfg and swaps it in; on any error the
// running configuration stays. Endpoints unchanged by cfg keep their breakers
// and load counters. In-flight requests finish on the snapshot they started with.
func (g *Gateway) Apply(cfg *config.Config) (err error) {
	g.ops.applyMu.Lock()
	defer g.ops.applyMu.Unlock()
	prev := g.snap.Load()
	defer func() { g.afterApply(cfg, prev, err) }()
	if err := cfg.Validate(); err != nil {
		return err
	}
	s := &snapshot{cfg: cfg, models: map[string]route{}}
	for _, t := range cfg.Tiers {
		s.tiers = append(s.tiers, t.Name)
	}
	var prevPolicy *router.Policy // its calibrators are kept across reloads when their settings match
	if prev != nil {
		prevPolicy = prev.policy
	}
	p, err := router.CompileFrom(cfg.Routing, cfg.Tiers, prevPolicy)
	if err != nil {
		return fmt.Errorf("routing: %w", err)
	}
	s.verifier = verify.Default()
	if f := cfg.Routing.Cascade.ModelFile; f != "" {
		if s.verifier, err = verify.Load(f); err != nil {
			return fmt.Errorf("routing.cascade.model_file: %w", err)
		}
	}
	s.policy = p
	s.models["auto"] = route{auto: true}
	for _, a := range cfg.Routing.Aliases {
		s.models[a.Name] = route{auto: true}
	}
	for _, t := range cfg.Tiers {
		s.models[t.Name] = route{tier: t.Name}
		for _, e := range t.Endpoints {
			if _, taken := s.models[e.Model]; !taken {
				s.models[e.Model] = route{tier: t.Name}
			}
		}
	}
	s.modelList = buildModelList(s.models, g.now())
	s.pools = g.registry.Pools(cfg)
	s.tel = buildTelSets(cfg)
	s.tel.addEndpoints(s.pools)
	s.pricer = costing.NewPricer(cfg.Tiers)
	g.snap.Store(s)
	return nil
}

func (g *Gateway) now() time.Time {
	if g.opts.Now == nil {
		return time.Now()
	}
	return g.opts.Now()
}

func buildModelList(models map[string]route, now time.Time) []byte {
	names := make([]string, 0, len(models))
	for n := range models {
		names = append(names, n)
	}
	sort.Strings(names)
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list"}
	for _, n := range names {
		owner := "cascade"
		if r := models[n]; !r.auto {
			owner = "cascade:" + r.tier
		}
		list.Data = append(list.Data, model{ID: n, Object: "model", Created: now.Unix(), OwnedBy: owner})
	}
	b, _ := json.Marshal(list)
	return b
}

func (g *Gateway) routes() {
	g.app.Use(g.requestID)
	g.app.Use(g.tracing)
	if g.opts.Metrics != nil {
		g.opsRouter().Get("/metrics", adaptor.HTTPHandler(g.opts.Metrics))
	}
	g.app.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok") })
	g.app.Get("/readyz", g.ready)
	g.app.Get("/v1/models", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		return c.Send(g.snap.Load().modelList)
	})
	g.app.Post("/v1/chat/completions", func(c *fiber.Ctx) error { return g.complete(c, true) })
	g.app.Post("/v1/completions", func(c *fiber.Ctx) error { return g.complete(c, false) })
	g.opsRouter().Get("/dashboard", serveDashboard)
	g.adminRoutes()
	g.app.Use(func(c *fiber.Ctx) error {
		return writeError(c, &apiError{Status: 404, Type: "invalid_request_error", Code: "not_found",
			Message: fmt.Sprintf("no route %s %s; the API serves /v1/chat/completions, /v1/completions and /v1/models", c.Method(), c.Path())})
	})
}

// ready answers 200 when a request for every tier can be served: the tier has
// an endpoint whose breaker is not open, or a tier it may fall back to has one
// (then the body says which tiers are degraded). Only when some tier cannot be
// served at all does it answer 503, so a fleet of gateways sharing the same
// backends does not go unready all at once while fallback still serves.
func (g *Gateway) ready(c *fiber.Ctx) error {
	s := g.snap.Load()
	var degraded []string
	for _, t := range s.tiers {
		if s.available(t) {
			continue
		}
		served := false
		for _, f := range s.tryOrder(t)[1:] {
			if s.available(f) {
				served = true
				break
			}
		}
		if !served {
			return writeError(c, &apiError{Status: 503, Type: "service_unavailable", Code: "tier_unavailable",
				Message: fmt.Sprintf("tier %q has no available endpoint and no tier it may fall back to has one", t)})
		}
		degraded = append(degraded, t)
	}
	if len(degraded) > 0 {
		return c.SendString("ready, degraded: no available endpoint in " + strings.Join(degraded, ", ") + "; served by fallback")
	}
	return c.SendString("ready")
}

// available reports whether tier has an endpoint whose breaker lets requests through.
func (s *snapshot) available(tier string) bool {
	for _, e := range s.pools[tier].Endpoints {
		if e.Available() {
			return true
		}
	}
	return false
}
