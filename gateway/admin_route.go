package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"

	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/router"
)

// adminExtraRoutes registers the admin endpoints that build on other parts
// (stats from the accounting records, routing dry runs).
func (g *Gateway) adminExtraRoutes(a fiber.Router) {
	a.Get("/stats", g.adminStats)
	a.Post("/route", g.adminRoute)
}

// statsTimeout bounds the Redis reads of one GET /admin/stats.
const statsTimeout = 10 * time.Second

// adminStats serves GET /admin/stats?window=1h&by=tier from the rollups the
// Redis recorder writes.
func (g *Gateway) adminStats(c *fiber.Ctx) error {
	if g.opts.Redis == nil {
		return writeError(c, &apiError{Status: fiber.StatusServiceUnavailable, Type: "service_unavailable", Code: "stats_unavailable",
			Message: "stats are read from Redis, and none is configured: set redis.url in the config so requests are recorded"})
	}
	window := time.Hour
	if w := c.Query("window"); w != "" {
		d, err := time.ParseDuration(w)
		if err != nil {
			return writeError(c, badRequest("window", "window must be a Go duration such as 15m, 1h or 24h, at most 720h; got %q", w))
		}
		window = d
	}
	s := g.snap.Load()
	ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
	defer cancel()
	rep, err := costing.Query(ctx, g.opts.Redis, s.cfg.Redis.Prefix, window, c.Query("by", "tier"), g.now())
	if errors.Is(err, costing.ErrBadQuery) {
		return writeError(c, badRequest("", "%s", err.Error()))
	}
	if err != nil {
		return writeError(c, &apiError{Status: fiber.StatusServiceUnavailable, Type: "service_unavailable", Code: "stats_unavailable",
			Message: "reading stats from Redis failed: " + err.Error()})
	}
	if sr, ok := g.opts.Recorder.(costing.StatsReporter); ok {
		st := sr.Stats()
		rep.Recorder = &st
	}
	rep.Routing = routingSummary(s)
	return c.JSON(rep)
}

// routingSummary is the routing state shown with the stats: the threshold
// requests for "auto" are compared with now, and the target escalation rate
// (nil with a fixed threshold).
func routingSummary(s *snapshot) *costing.RoutingSummary {
	rs := &costing.RoutingSummary{Threshold: s.policy.Threshold()}
	if r := s.cfg.Routing.TargetEscalationRate; r > 0 {
		rs.TargetEscalationRate = &r
	}
	return rs
}

// routeAnswer is the body of POST /admin/route.
type routeAnswer struct {
	Model     string  `json:"model"`
	Tier      string  `json:"tier"`
	Score     float64 `json:"score"`
	Threshold float64 `json:"threshold"`
	Escalated bool    `json:"escalated"`
	// Reason is "score", "alias" or "header" when escalated, "pinned" when
	// the model names a tier or upstream model, else "".
	Reason  string          `json:"reason"`
	Reasons []router.Reason `json:"reasons"`
}

// adminRoute serves POST /admin/route: the routing decision the running
// policy would take for a chat-completions (or completions) request body,
// without calling any backend and without feeding the calibration. The
// X-Cascade-Tier header is honoured as on the API. ?k= bounds the reasons
// (features that moved the score most; default 8).
func (g *Gateway) adminRoute(c *fiber.Ctx) error {
	s := g.snap.Load()
	body, err := requestBody(c, s.cfg.MaxBodyBytes)
	if err == nil {
		err = checkJSON(body, s.cfg.MaxJSONDepth) // before gjson looks
	}
	if err != nil {
		return writeError(c, err)
	}
	chat := gjson.GetBytes(body, "messages").Exists() || !gjson.GetBytes(body, "prompt").Exists()
	req, err := parseRequest(body, chat, s.cfg.MaxJSONDepth)
	if err != nil {
		return writeError(c, err)
	}
	rt, ok := s.models[req.Model]
	if !ok {
		return writeError(c, unknownModel(req.Model))
	}
	model, header := req.Model, c.Get(headerTier)
	if !rt.auto {
		model, header = "auto", ""
	}
	dec, err := s.policy.DryRun(model, header, &req.Input)
	if err != nil {
		if errors.Is(err, router.ErrContextLength) {
			return writeError(c, contextTooLong(err))
		}
		return writeError(c, s.badTierHeader(err))
	}
	ans := routeAnswer{Model: req.Model, Tier: dec.Tier, Score: dec.Score, Threshold: dec.Threshold,
		Escalated: dec.Escalated, Reason: dec.Reason, Reasons: []router.Reason{}}
	if !rt.auto {
		ans.Tier, ans.Escalated, ans.Reason = rt.tier, false, "pinned"
	}
	if ex, ok := s.policy.Scorer().(*router.Learned); ok { // the length scorer has no reasons
		ans.Reasons = append(ans.Reasons, ex.Explain(&req.Input, min(c.QueryInt("k", 8), 64))...)
	}
	return c.JSON(ans)
}
