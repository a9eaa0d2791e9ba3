package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/gofiber/fiber/v2"
	"github.com/openai/openai-go/v3"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
)

// ---------- page and assets ----------

func TestDashboardServesPage(t *testing.T) {
	g, err := New(testConfig(t, []string{"http://127.0.0.1:1/v1"}, []string{"http://127.0.0.1:1/v1"}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	})
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		resp, err := g.App().Test(mustRequest(t, method, "/dashboard"), -1)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s /dashboard: status %d: %s", method, resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Fatalf("content-type %q", ct)
		}
		if method == http.MethodHead {
			continue
		}
		page := string(body)
		if page != string(dashboardPage) {
			t.Fatal("served body is not the assembled page")
		}
		for _, want := range []string{`id="kpi-requests"`, `id="kpi-escalation-rate"`, `id="kpi-cost"`, `id="kpi-savings"`, `id="backends-table"`, `id="last-updated"`} {
			if !strings.Contains(page, want) {
				t.Fatalf("page lacks %s", want)
			}
		}
		// Self-contained: no stylesheet or script is fetched.
		if strings.Contains(page, "<link rel=\"stylesheet\"") || regexp.MustCompile(`<script[^>]*\ssrc=`).MatchString(page) {
			t.Fatal("page still references external stylesheet or script files")
		}
		// The CSP admits exactly the inline blocks served, and nothing but same-origin fetches.
		csp := resp.Header.Get("Content-Security-Policy")
		script := between(t, page, "<script>", "</script>")
		style := between(t, page, "<style>", "</style>")
		for _, want := range []string{"default-src 'none'", "connect-src 'self'", "script-src " + cspHash(script), "style-src " + cspHash(style), "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Fatalf("CSP %q lacks %q", csp, want)
			}
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Fatalf("security headers missing: %v", resp.Header)
		}
	}
}

// TestDashboardAssetsHaveNoExternalURLs scans the embedded files: outside
// comments nothing may point off the gateway (no CDN on an air-gapped cluster).
func TestDashboardAssetsHaveNoExternalURLs(t *testing.T) {
	blockComments := regexp.MustCompile(`(?s)/\*.*?\*/|<!--.*?-->`)
	lineComment := regexp.MustCompile(`(?m)^\s*//.*$`)
	external := regexp.MustCompile(`(?i)https?://|["'(=]\s*//[a-z0-9]|@import|\burl\(\s*['"]?[a-z]+:`)
	for _, name := range []string{"dashboard/index.html", "dashboard/dashboard.css", "dashboard/dashboard.js"} {
		b, err := dashboardFS.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		code := lineComment.ReplaceAllString(blockComments.ReplaceAllString(string(b), ""), "")
		if loc := external.FindStringIndex(code); loc != nil {
			t.Errorf("%s references something external: %q", name, code[max(0, loc[0]-40):min(len(code), loc[1]+40)])
		}
	}
	// The only href/src left in the assembled page is the empty data: icon.
	for _, m := range regexp.MustCompile(`(?i)\b(?:href|src)\s*=\s*"([^"]*)"`).FindAllStringSubmatch(string(dashboardPage), -1) {
		if m[1] != "data:," {
			t.Errorf("assembled page references %q", m[1])
		}
	}
}

func TestBuildDashboardRejectsBrokenAssets(t *testing.T) {
	page, csp, err := buildDashboard(dashboardFS)
	if err != nil || len(page) == 0 || csp == "" {
		t.Fatalf("embedded assets: %v", err)
	}
	if strings.Contains(string(page), dashboardCSSTag) || strings.Contains(string(page), dashboardJSTag) {
		t.Fatal("placeholders left in the page")
	}
}

func mustRequest(t *testing.T, method, path string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func between(t *testing.T, s, open, close string) string {
	t.Helper()
	i := strings.Index(s, open)
	j := strings.Index(s, close)
	if i < 0 || j < i {
		t.Fatalf("no %s…%s block", open, close)
	}
	return s[i+len(open) : j]
}

func cspHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// ---------- a real browser ----------

// chromiumPath finds Debian's chromium. Without it the browser tests skip,
// except in CI, where a missing browser is a failure.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("CASCADE_CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "chromium not found (looked for $CASCADE_CHROMIUM, chromium, chromium-browser): install it with `apt-get install -y chromium` to run the dashboard browser tests"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI must install it (.ci/run does)")
	}
	t.Skip(msg)
	return ""
}

// newBrowser starts a headless chromium with a fresh profile and returns a
// tab context. Everything is torn down when the test ends.
func newBrowser(t *testing.T, width, height int) context.Context {
	t.Helper()
	path := chromiumPath(t)
	profile := t.TempDir()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(width, height),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	// Start the browser now so a broken install fails here, with its error.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium %s: %v", path, err)
	}
	// Every page collects script errors and Content-Security-Policy
	// violations, which the tests then require to be none.
	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: pageProblems}); err != nil {
		t.Fatal(err)
	}
	return ctx
}

const pageProblems = `window.__problems = [];
addEventListener('securitypolicyviolation', (e) => window.__problems.push('CSP blocked ' + e.violatedDirective + ' ' + e.blockedURI));
addEventListener('error', (e) => window.__problems.push('error: ' + e.message));
addEventListener('unhandledrejection', (e) => window.__problems.push('unhandled rejection: ' + e.reason));`

// run executes browser actions with a deadline.
func run(t *testing.T, ctx context.Context, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatal(err)
	}
}

// evalJS evaluates a JavaScript expression in the page, awaits it if it is
// a promise, and decodes its value.
func evalJS[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluating %.60q: %v", expr, err)
	}
	return v
}

// poll waits until a JavaScript expression is truthy.
func poll(t *testing.T, ctx context.Context, expr string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(timeout))); err != nil {
		t.Fatalf("waiting for %s: %v", expr, err)
	}
}

// saveScreenshot writes a full-page PNG into t.TempDir() and, when
// CASCADE_SCREENSHOT_DIR is set, copies it there.
func saveScreenshot(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot is not a PNG (%d bytes)", len(png))
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("CASCADE_SCREENSHOT_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", filepath.Join(dir, name))
	}
	return path
}

// shownFigures is what the page displays, read from the DOM.
type shownFigures struct {
	Rendered    string            `json:"rendered"`
	Values      map[string]string `json:"values"` // kpi id -> data-value
	Texts       map[string]string `json:"texts"`  // kpi id -> shown text
	Subs        map[string]string `json:"subs"`
	Banner      string            `json:"banner"`
	BannerState string            `json:"bannerState"`
	BannerShown bool              `json:"bannerShown"`
	TokenForm   bool              `json:"tokenForm"`
	Updated     string            `json:"updated"`
	Backends    []map[string]any  `json:"backends"`
	Tiers       []string          `json:"tiers"`
	Dropped     string            `json:"dropped"`
	Charts      map[string]int    `json:"charts"` // chart id -> number of marks drawn
	Empty       map[string]string `json:"empty"`  // chart id -> empty-state text
	Hash        string            `json:"hash"`
	Stored      string            `json:"stored"`
	Overflow    bool              `json:"overflow"` // page wider than the viewport
	Problems    []string          `json:"problems"` // script errors and CSP violations
}

const readFigures = `(() => {
  const ids = ['kpi-requests','kpi-escalation-rate','kpi-cost','kpi-savings','kpi-energy','kpi-tokens-per-wh'];
  const out = {values:{}, texts:{}, subs:{}, charts:{}, empty:{}};
  for (const id of ids) {
    const e = document.getElementById(id);
    out.values[id] = e.dataset.value;
    out.texts[id] = e.querySelector('.kpi-value').textContent;
    out.subs[id] = e.querySelector('.kpi-sub').textContent;
  }
  for (const id of ['chart-requests','chart-cost','chart-energy','chart-latency']) {
    const c = document.getElementById(id);
    out.charts[id] = c.querySelectorAll('rect.bar, path.line, path.area, circle.point').length;
    const em = c.querySelector('.empty');
    out.empty[id] = em ? em.textContent : '';
  }
  out.rendered = document.body.dataset.rendered || '';
  const b = document.getElementById('banner');
  out.banner = b.textContent; out.bannerState = b.dataset.state || ''; out.bannerShown = !b.hidden;
  out.tokenForm = !document.getElementById('token-form').hidden;
  out.updated = document.getElementById('last-updated').dataset.time || '';
  out.backends = [...document.querySelectorAll('#backends-table tbody tr')].filter(r => !r.querySelector('.empty-row')).map(r => ({
    breaker: r.dataset.breaker, cells: [...r.children].map(td => td.textContent)}));
  out.tiers = [...document.querySelectorAll('#tiers-table tbody tr[data-tier]')].map(r => r.dataset.tier);
  out.dropped = document.getElementById('recorder').dataset.dropped;
  out.hash = location.hash;
  try { out.stored = sessionStorage.getItem('cascade.dashboard.token') || ''; } catch (e) { out.stored = 'ERR'; }
  out.overflow = document.documentElement.scrollWidth > window.innerWidth;
  out.problems = window.__problems || ['the problem collector did not run'];
  return out;
})()`

// waitRendered waits until the page has rendered at least one answer after
// the given one, then returns what it shows.
func waitRendered(t *testing.T, ctx context.Context, after int) shownFigures {
	t.Helper()
	poll(t, ctx, `Number(document.body.dataset.rendered || 0) > `+strconv.Itoa(after), 20*time.Second)
	f := evalJS[shownFigures](t, ctx, readFigures)
	if len(f.Problems) > 0 {
		t.Errorf("the page reported problems: %q", f.Problems)
	}
	return f
}

// ---------- fixture admin API: the page's logic against known answers ----------

type fixtureAPI struct {
	mu          sync.Mutex
	token       string
	statsStatus int
	stats       []byte
	backends    []byte
	requests    []string // "METHOD path auth" of every request seen
}

func (f *fixtureAPI) set(status int, stats any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statsStatus = status
	b, _ := json.Marshal(stats)
	f.stats = b
}

func (f *fixtureAPI) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// startFixtureAPI serves the dashboard and canned admin answers, at the root
// and under /ops/ (a page mounted behind a path prefix).
func startFixtureAPI(t *testing.T) (*fixtureAPI, string) {
	t.Helper()
	f := &fixtureAPI{token: "fixture-token-+/=", statsStatus: 200}
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Use(func(c *fiber.Ctx) error {
		f.mu.Lock()
		f.requests = append(f.requests, c.Method()+" "+c.OriginalURL()+" "+c.Get("Authorization"))
		f.mu.Unlock()
		return c.Next()
	})
	for _, prefix := range []string{"", "/ops"} {
		app.Get(prefix+"/dashboard", serveDashboard)
		admin := app.Group(prefix+"/admin", func(c *fiber.Ctx) error {
			f.mu.Lock()
			ok := c.Get("Authorization") == "Bearer "+f.token
			f.mu.Unlock()
			if !ok {
				return c.Status(401).JSON(fiber.Map{"error": fiber.Map{"message": "invalid admin token", "type": "authentication_error", "code": "invalid_admin_token"}})
			}
			return c.Next()
		})
		admin.Get("/stats", func(c *fiber.Ctx) error {
			f.mu.Lock()
			status, body := f.statsStatus, f.stats
			f.mu.Unlock()
			c.Set("Content-Type", "application/json")
			return c.Status(status).Send(body)
		})
		admin.Get("/backends", func(c *fiber.Ctx) error {
			f.mu.Lock()
			body := f.backends
			f.mu.Unlock()
			c.Set("Content-Type", "application/json")
			return c.Send(body)
		})
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Listener(ln)
	t.Cleanup(func() { app.ShutdownWithTimeout(5 * time.Second) })
	f.backends, _ = json.Marshal(fixtureBackends())
	return f, "http://" + ln.Addr().String()
}

func fixtureBackends() map[string]any {
	now := time.Now().UTC().Format(time.RFC3339)
	ep := func(tier, url, model, breaker string, avail bool, running, waiting int, kv, lat, errRate float64, scrapeErr string) map[string]any {
		return map[string]any{"tier": tier, "url": url, "model": model, "weight": 1, "available": avail, "breaker": breaker,
			"in_flight": running, "latency_ms": lat, "error_rate": errRate,
			"load": map[string]any{"running": running, "waiting": waiting, "kv_cache_usage": kv, "scraped_at": now, "error": scrapeErr}}
	}
	return map[string]any{"endpoints": []any{
		ep("small", "http://small-0.models.svc:8000/v1", "llama-3.2-1b-distilled", "closed", true, 3, 0, 0.21, 84.2, 0.0, ""),
		ep("small", "http://small-1.models.svc:8000/v1", "llama-3.2-1b-distilled", "half-open", true, 1, 0, 0.08, 97.5, 0.04, ""),
		ep("large", "http://large-0.models.svc:8000/v1", "llama-3.1-70b", "open", false, 0, 12, 0.93, 1840, 0.31, "connection refused"),
	}}
}

// fixtureStats is an hour of traffic: a day's shape squeezed into 60 minutes.
func fixtureStats(target any) map[string]any {
	to := time.Now().UTC().Truncate(time.Second)
	from := to.Add(-time.Hour)
	var series []any
	var total = map[string]float64{}
	for i := 0; i < 60; i++ {
		if i >= 20 && i < 24 { // a gap: no traffic for four minutes
			continue
		}
		tm := from.Truncate(time.Minute).Add(time.Duration(i+1) * time.Minute)
		req := 40 + 25*math.Sin(float64(i)/9) + float64(i%7)
		esc := math.Round(req * (0.18 + 0.1*math.Sin(float64(i)/5)))
		req = math.Round(req)
		cost := req*0.00021 + esc*0.0031
		base := req * 0.0034
		wh := req*0.9 + esc*3.1
		out := req * 180
		series = append(series, map[string]any{"t": tm.Format(time.RFC3339), "requests": req, "escalations": esc, "errors": float64(i % 13 / 12),
			"cost_usd": cost, "baseline_cost_usd": base, "energy_wh": wh, "output_tokens": out})
		total["requests"] += req
		total["escalations"] += esc
		total["cost"] += cost
		total["base"] += base
		total["wh"] += wh
		total["out"] += out
	}
	group := func(share float64, p50, p99 float64) map[string]any {
		req := math.Round(total["requests"] * share)
		return map[string]any{"requests": req, "escalations": math.Round(total["escalations"] * share), "escalation_rate": total["escalations"] / total["requests"],
			"errors": 3, "input_tokens": req * 420, "output_tokens": total["out"] * share,
			"cost_usd": total["cost"] * share, "baseline_cost_usd": total["base"] * share, "savings_usd": (total["base"] - total["cost"]) * share,
			"savings_rate": (total["base"] - total["cost"]) / total["base"], "energy_wh": total["wh"] * share, "tokens_per_wh": total["out"] / total["wh"],
			"latency_ms": map[string]any{"p50": p50, "p95": p99 * 0.7, "p99": p99}, "ttft_ms": map[string]any{"p50": p50 / 6, "p95": p99 / 5, "p99": p99 / 4}}
	}
	tot := group(1, 420, 3100)
	tot["escalation_rate"] = total["escalations"] / total["requests"]
	return map[string]any{
		"window": "1h", "from": from.Format(time.RFC3339), "to": to.Format(time.RFC3339), "by": "tier",
		"recorder": map[string]any{"queued": 2, "dropped": 17, "written": 2310, "errors": 0},
		"routing":  map[string]any{"threshold": 0.53, "target_escalation_rate": target},
		"total":    tot,
		"groups":   map[string]any{"small": group(0.78, 310, 980), "large": group(0.22, 1350, 4200)},
		"series":   series,
	}
}

func TestDashboardBrowserFixtures(t *testing.T) {
	api, base := startFixtureAPI(t)
	ctx := newBrowser(t, 1366, 768) // closed before the servers, so they need not wait for its connections
	stats := fixtureStats(0.25)
	api.set(200, stats)

	t.Run("figures", func(t *testing.T) {
		run(t, ctx, chromedp.Navigate(base+"/dashboard#token="+api.token))
		f := waitRendered(t, ctx, 0)
		tot := stats["total"].(map[string]any)
		wantValue(t, f, "kpi-requests", tot["requests"])
		wantValue(t, f, "kpi-escalation-rate", tot["escalation_rate"])
		wantValue(t, f, "kpi-cost", tot["cost_usd"])
		wantValue(t, f, "kpi-savings", tot["savings_usd"])
		wantValue(t, f, "kpi-energy", tot["energy_wh"])
		wantValue(t, f, "kpi-tokens-per-wh", tot["tokens_per_wh"])
		checkShownText(t, f, tot)
		if !strings.Contains(f.Subs["kpi-escalation-rate"], "target 25.0%") {
			t.Errorf("escalation subline %q lacks the target", f.Subs["kpi-escalation-rate"])
		}
		for id, n := range f.Charts {
			if id != "chart-latency" && n < 50 || n < 6 {
				t.Errorf("%s drew only %d marks", id, n)
			}
			if f.Empty[id] != "" {
				t.Errorf("%s shows empty state %q with data", id, f.Empty[id])
			}
		}
		if len(f.Backends) != 3 || f.Backends[0]["breaker"] != "closed" || f.Backends[1]["breaker"] != "half-open" || f.Backends[2]["breaker"] != "open" {
			t.Fatalf("backends table: %+v", f.Backends)
		}
		if cells := f.Backends[2]["cells"].([]any); !strings.Contains(strings.Join(toStrings(cells), "|"), "connection refused") || cells[3] != "unavailable" {
			t.Errorf("open backend row: %v", cells)
		}
		if strings.Join(f.Tiers, ",") != "small,large" {
			t.Errorf("tiers in order %v, want small,large (the backends' order)", f.Tiers)
		}
		if f.Dropped != "17" {
			t.Errorf("recorder dropped shows %q", f.Dropped)
		}
		if f.Updated == "" || f.BannerShown {
			t.Errorf("updated %q, banner %q", f.Updated, f.Banner)
		}
		// The token left the address bar, stayed in this tab, and went only to the admin API.
		if strings.Contains(f.Hash, "token") || f.Stored != api.token {
			t.Errorf("hash %q, stored %q", f.Hash, f.Stored)
		}
		if f.Overflow {
			t.Error("page is wider than a 1366 px screen")
		}
		for _, r := range api.seen() {
			if strings.HasPrefix(r, "GET /admin/") != strings.HasSuffix(r, " Bearer "+api.token) {
				t.Errorf("request %q: the token goes to the admin API and nowhere else", r)
			}
			if !strings.HasPrefix(r, "GET /admin/stats?window=1h&by=tier ") && !strings.HasPrefix(r, "GET /admin/backends ") && !strings.HasPrefix(r, "GET /dashboard ") {
				t.Errorf("unexpected request %q", r)
			}
		}
		// Hovering a bucket shows its figures.
		pt := evalJS[[]float64](t, ctx, `(() => { const r = document.querySelector('#chart-requests svg').getBoundingClientRect(); return [r.left + r.width * 0.8, r.top + r.height / 2]; })()`)
		run(t, ctx, chromedp.MouseEvent(chromedp.MouseMoved, pt[0], pt[1]))
		tip := evalJS[string](t, ctx, `(() => { const e = document.getElementById('tooltip'); return e.hidden ? '' : e.textContent; })()`)
		if !strings.Contains(tip, "Requests") || !strings.Contains(tip, "Escalation rate") {
			t.Errorf("tooltip on hover: %q", tip)
		}
		saveScreenshot(t, ctx, "dashboard-fixture-1366.png")
		run(t, ctx, chromedp.MouseEvent(chromedp.MouseMoved, 1, 1))
		run(t, ctx, chromedp.EmulateViewport(1920, 1080))
		n := atoi(f.Rendered)
		evalJS[bool](t, ctx, `(window.cascadeDashboard.refresh(), true)`)
		f = waitRendered(t, ctx, n)
		if f.Overflow {
			t.Error("page is wider than a 1920 px screen")
		}
		saveScreenshot(t, ctx, "dashboard-fixture-1920.png")
		run(t, ctx, chromedp.EmulateViewport(1366, 768))
	})

	t.Run("auto-refresh picks up new figures", func(t *testing.T) {
		before := evalJS[string](t, ctx, `document.body.dataset.rendered`)
		next := fixtureStats(nil) // fixed threshold now
		next["total"].(map[string]any)["requests"] = 99999.0
		api.set(200, next)
		f := waitRendered(t, ctx, atoi(before)) // the 5 s timer, not a reload
		if f.Values["kpi-requests"] != "99999" || f.Texts["kpi-requests"] != "99,999" {
			t.Fatalf("after refresh: %q %q", f.Values["kpi-requests"], f.Texts["kpi-requests"])
		}
		if !strings.Contains(f.Subs["kpi-escalation-rate"], "fixed threshold 0.53") {
			t.Errorf("fixed-threshold subline %q", f.Subs["kpi-escalation-rate"])
		}
		api.set(200, stats)
	})

	t.Run("window buttons", func(t *testing.T) {
		before := len(api.seen())
		n := atoi(evalJS[string](t, ctx, `document.body.dataset.rendered`))
		run(t, ctx, chromedp.Click(chromedp.CSS(`#windows button[data-window="24h"]`)))
		waitRendered(t, ctx, n)
		asked := false
		for _, r := range api.seen()[before:] {
			asked = asked || strings.HasPrefix(r, "GET /admin/stats?window=24h&by=tier ")
		}
		pressed := evalJS[string](t, ctx, `[...document.querySelectorAll('#windows button[aria-pressed="true"]')].map(b => b.dataset.window).join(',')`)
		if !asked || pressed != "24h" {
			t.Fatalf("24 h: asked %v, pressed %q, requests %q", asked, pressed, api.seen()[before:])
		}
		n = atoi(evalJS[string](t, ctx, `document.body.dataset.rendered`))
		run(t, ctx, chromedp.Click(chromedp.CSS(`#windows button[data-window="1h"]`)))
		waitRendered(t, ctx, n)
	})

	t.Run("CSP keeps the page on its origin", func(t *testing.T) {
		// A script that tried to send the token elsewhere would be stopped
		// by the policy the gateway sends with the page.
		blocked := evalJS[bool](t, ctx, `fetch('http://127.0.0.2:9/steal').then(() => false, () => true)`)
		poll(t, ctx, `window.__problems.length > 0`, 5*time.Second)
		problems := evalJS[[]string](t, ctx, `window.__problems.splice(0)`)
		if !blocked || len(problems) != 1 || !strings.HasPrefix(problems[0], "CSP blocked connect-src") {
			t.Fatalf("off-origin fetch: blocked %v, reported %q", blocked, problems)
		}
	})

	t.Run("no Redis", func(t *testing.T) {
		api.set(503, map[string]any{"error": map[string]any{"message": "stats need Redis: redis.url is not configured", "type": "service_unavailable", "code": "stats_unavailable"}})
		f := refreshAndRead(t, ctx)
		if f.BannerState != "error" || !strings.Contains(f.Banner, "Statistics unavailable (HTTP 503): stats need Redis") {
			t.Fatalf("banner %q (%s)", f.Banner, f.BannerState)
		}
		if f.Values["kpi-requests"] != "" || f.Texts["kpi-requests"] != "–" || f.Empty["chart-requests"] != "Statistics unavailable" {
			t.Fatalf("stale figures shown without stats: %+v", f)
		}
		if len(f.Backends) != 3 {
			t.Fatalf("backend health should still show without Redis: %+v", f.Backends)
		}
		saveScreenshot(t, ctx, "dashboard-fixture-no-redis.png")
		api.set(200, stats)
	})

	t.Run("empty window", func(t *testing.T) {
		empty := fixtureStats(0.25)
		zero := map[string]any{"requests": 0, "escalations": 0, "escalation_rate": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0,
			"cost_usd": 0, "baseline_cost_usd": 0, "savings_usd": 0, "savings_rate": 0, "energy_wh": 0, "tokens_per_wh": 0,
			"latency_ms": map[string]any{"p50": 0, "p95": 0, "p99": 0}, "ttft_ms": map[string]any{"p50": 0, "p95": 0, "p99": 0}}
		empty["total"], empty["groups"], empty["series"] = zero, map[string]any{}, []any{}
		api.set(200, empty)
		f := refreshAndRead(t, ctx)
		if f.Values["kpi-requests"] != "0" || f.Texts["kpi-requests"] != "0" || !strings.Contains(f.Banner, "No requests recorded") {
			t.Fatalf("empty state: %q %q banner %q", f.Values["kpi-requests"], f.Texts["kpi-requests"], f.Banner)
		}
		for id, msg := range f.Empty {
			if !strings.HasPrefix(msg, "No ") {
				t.Errorf("%s empty message %q", id, msg)
			}
		}
		api.set(200, stats)
	})

	t.Run("wrong token asks for one", func(t *testing.T) {
		api.mu.Lock()
		api.token = "rotated"
		api.mu.Unlock()
		f := refreshAndRead(t, ctx)
		if !f.TokenForm || !strings.Contains(f.Banner, "refused the token (HTTP 401): invalid admin token") || f.Values["kpi-requests"] != "" {
			t.Fatalf("401: form %v banner %q value %q", f.TokenForm, f.Banner, f.Values["kpi-requests"])
		}
		n := atoi(f.Rendered)
		run(t, ctx,
			chromedp.SendKeys(chromedp.CSS("#token-input"), "rotated"),
			chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`)),
		)
		f = waitRendered(t, ctx, n)
		if f.TokenForm || f.Stored != "rotated" || f.Values["kpi-requests"] == "" || f.BannerShown {
			t.Fatalf("after entering the token: form %v stored %q value %q banner %q", f.TokenForm, f.Stored, f.Values["kpi-requests"], f.Banner)
		}
	})

	t.Run("behind a path prefix", func(t *testing.T) {
		before := len(api.seen())
		run(t, ctx, chromedp.Navigate(base+"/ops/dashboard"))
		f := waitRendered(t, ctx, 0) // token from sessionStorage
		if f.Values["kpi-requests"] == "" {
			t.Fatalf("no figures under /ops/: %+v", f)
		}
		sawOps := false
		for _, r := range api.seen()[before:] {
			if strings.HasPrefix(r, "GET /admin/") {
				t.Errorf("page under /ops/ asked %q", r)
			}
			sawOps = sawOps || strings.HasPrefix(r, "GET /ops/admin/stats?window=1h&by=tier ")
		}
		if !sawOps {
			t.Error("page under /ops/ did not ask /ops/admin/stats")
		}
	})

	t.Run("no token", func(t *testing.T) {
		evalJS[bool](t, ctx, `(sessionStorage.clear(), true)`)
		before := len(api.seen())
		run(t, ctx, chromedp.Navigate(base+"/dashboard"))
		f := waitNoToken(t, ctx)
		if !f.TokenForm || !strings.Contains(f.Banner, "Enter the admin token") {
			t.Fatalf("no token: form %v banner %q", f.TokenForm, f.Banner)
		}
		for _, r := range api.seen()[before:] {
			if strings.Contains(r, "/admin/") {
				t.Errorf("asked the admin API without a token: %q", r)
			}
		}
	})
}

// refreshAndRead triggers a refresh and returns the page after it rendered.
func refreshAndRead(t *testing.T, ctx context.Context) shownFigures {
	t.Helper()
	before := evalJS[string](t, ctx, `document.body.dataset.rendered || '0'`)
	run(t, ctx, chromedp.Click(chromedp.CSS("#refresh")))
	return waitRendered(t, ctx, atoi(before))
}

func waitNoToken(t *testing.T, ctx context.Context) shownFigures {
	t.Helper()
	poll(t, ctx, `!document.getElementById('token-form').hidden`, 10*time.Second)
	return evalJS[shownFigures](t, ctx, readFigures)
}

// wantValue checks that a figure's raw value is exactly the API's number.
func wantValue(t *testing.T, f shownFigures, id string, want any) {
	t.Helper()
	w, ok := toFloat(want)
	if !ok {
		t.Fatalf("%s: API value %v is not a number", id, want)
	}
	got, err := strconv.ParseFloat(f.Values[id], 64)
	if err != nil || got != w {
		t.Errorf("%s shows data-value %q, API says %v", id, f.Values[id], w)
	}
}

// checkShownText checks that the visible numbers read back to the API's
// figures within the precision shown.
func checkShownText(t *testing.T, f shownFigures, tot map[string]any) {
	t.Helper()
	req, _ := toFloat(tot["requests"])
	if got := f.Texts["kpi-requests"]; got != groupThousands(int64(req)) {
		t.Errorf("requests shown %q, want %q", got, groupThousands(int64(req)))
	}
	rate, _ := toFloat(tot["escalation_rate"])
	if got, ok := parseShown(f.Texts["kpi-escalation-rate"], "%"); !ok || math.Abs(got-rate*100) > 0.05+1e-9 {
		t.Errorf("escalation rate shown %q, API %v", f.Texts["kpi-escalation-rate"], rate)
	}
	for _, k := range [][2]string{{"kpi-cost", "cost_usd"}, {"kpi-savings", "savings_usd"}} {
		want, _ := toFloat(tot[k[1]])
		got, ok := parseShown(f.Texts[k[0]], "$")
		if !ok || math.Abs(got-want) > math.Max(0.005, math.Abs(want)*0.005) {
			t.Errorf("%s shown %q, API %v", k[0], f.Texts[k[0]], want)
		}
	}
}

// parseShown reads a number like "$1,234.56", "−$0.0042" or "12.5%".
func parseShown(s, unit string) (float64, bool) {
	neg := strings.HasPrefix(s, "−") || strings.HasPrefix(s, "-")
	s = strings.TrimLeft(s, "−-")
	s = strings.ReplaceAll(strings.ReplaceAll(s, unit, ""), ",", "")
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if neg {
		v = -v
	}
	return v, err == nil
}

func groupThousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	}
	return 0, false
}

func toStrings(v []any) []string {
	out := make([]string, len(v))
	for i, x := range v {
		out[i], _ = x.(string)
	}
	return out
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// ---------- the real thing: gateway, simulators, Redis, admin API ----------

// TestDashboardEndToEnd sends traffic through a gateway recording into the
// real Redis, opens the dashboard on the separate admin listener in headless
// chromium, and checks that the figures it shows are those GET /admin/stats
// answers.
func TestDashboardEndToEnd(t *testing.T) {
	chromiumPath(t)
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	_, largeURL := simServer(t, sim.Config{Model: "large-model"})
	cfg := testConfig(t, []string{smallURL}, []string{largeURL})
	cfg.Tiers[0].Cost = config.Cost{GPU: &config.GPUProfile{GPUs: 1, USDPerGPUHour: 2.5, WattsPerGPU: 500,
		PrefillTokensPerSec: 50000, DecodeTokensPerSec: 5000}}
	cfg.Tiers[1].Cost = config.Cost{GPU: &config.GPUProfile{GPUs: 4, USDPerGPUHour: 2.5, WattsPerGPU: 500,
		PrefillTokensPerSec: 25000, DecodeTokensPerSec: 2500}}
	token := fmt.Sprintf("dash-%x", rand.Uint64())
	env := fmt.Sprintf("CASCADE_TEST_DASHBOARD_TOKEN_%X", rand.Uint32())
	t.Setenv(env, token)
	cfg.Admin.TokenEnv = env
	cfg.Admin.Listen = "127.0.0.1:0" // served below on a listener of the test's own

	rdb, recClient, prefix := testRecorderRedis(t)
	cfg.Redis.Prefix = prefix
	rec := costing.NewRedisRecorder(recClient, prefix, config.Recorder{BatchSize: 8, FlushInterval: 20 * time.Millisecond})
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rec.Close(cctx)
	})
	// The gateway's clock runs behind while traffic is sent, so the requests
	// spread over the last half hour as they would in use.
	var behind atomic.Int64
	clock := func() time.Time { return time.Now().Add(-time.Duration(behind.Load())) }
	counted := &countingRecorder{next: rec}
	g, base := startGateway(t, cfg, Options{Redis: rdb, Recorder: counted, Now: clock})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.AdminApp().Listener(ln)
	admin := "http://" + ln.Addr().String()
	ctx := newBrowser(t, 1366, 768) // closed before the gateway, so it need not wait for its connections

	// The dashboard lives with the admin API, not on the API listener.
	if resp, err := http.Get(base + "/dashboard"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("API listener GET /dashboard: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	client := sdkClient(base)
	long := strings.Repeat("Prove that the sequence converges and derive its limit step by step. ", 80)
	const rounds = 30
	sent := 0
	for i := 0; i < rounds; i++ {
		// Move the clock only once the gateway has finished (and timed)
		// every request sent so far.
		waitFor(t, 15*time.Second, "the previous round's records", func() bool { return counted.n.Load() == int64(sent) })
		behind.Store(int64(time.Duration(rounds-1-i) * time.Minute))
		for _, model := range []string{"auto", "small", "large"} {
			prompt := fmt.Sprintf("What is %d+%d?", i, i)
			if i%4 == 0 {
				prompt = long
			}
			p := chatParams(model, prompt)
			p.MaxTokens = openai.Int(16)
			if i%2 == 0 {
				if _, err := client.Chat.Completions.New(context.Background(), p); err != nil {
					t.Fatal(err)
				}
			} else {
				st := client.Chat.Completions.NewStreaming(context.Background(), p)
				for st.Next() {
				}
				if err := st.Err(); err != nil {
					t.Fatal(err)
				}
				st.Close()
			}
			sent++
		}
	}
	waitFor(t, 15*time.Second, "the last round's records", func() bool { return counted.n.Load() == int64(sent) })
	behind.Store(0)

	// Wait until every request is in the rollups.
	var stats map[string]any
	waitFor(t, 15*time.Second, "the records to reach the stats", func() bool {
		stats = adminStats(t, admin, token)
		n, _ := toFloat(stats["total"].(map[string]any)["requests"])
		return int(n) == sent
	})
	tot := stats["total"].(map[string]any)
	if c, _ := toFloat(tot["cost_usd"]); c <= 0 {
		t.Fatalf("priced traffic should cost something: %v", tot)
	}
	// How many escalate is the router's business; the page shows whatever the stats say.
	t.Logf("sent %d, stats: %v requests, %v escalated", sent, tot["requests"], tot["escalations"])

	run(t, ctx, chromedp.Navigate(admin+"/dashboard#token="+token))
	f := waitRendered(t, ctx, 0)
	// The page fetched its own answer; nothing was recorded since, so ours must match it.
	again := adminStats(t, admin, token)["total"].(map[string]any)
	for _, k := range []string{"requests", "escalation_rate", "cost_usd", "savings_usd", "energy_wh", "tokens_per_wh"} {
		if again[k] != tot[k] {
			t.Fatalf("stats moved while nothing was sent: %s %v then %v", k, tot[k], again[k])
		}
	}
	wantValue(t, f, "kpi-requests", tot["requests"])
	wantValue(t, f, "kpi-escalation-rate", tot["escalation_rate"])
	wantValue(t, f, "kpi-cost", tot["cost_usd"])
	wantValue(t, f, "kpi-savings", tot["savings_usd"])
	wantValue(t, f, "kpi-energy", tot["energy_wh"])
	wantValue(t, f, "kpi-tokens-per-wh", tot["tokens_per_wh"])
	checkShownText(t, f, tot)
	if f.BannerShown || f.Updated == "" {
		t.Errorf("banner %q, updated %q", f.Banner, f.Updated)
	}
	if len(f.Backends) != 2 || f.Backends[0]["breaker"] != "closed" || f.Backends[1]["breaker"] != "closed" {
		t.Errorf("backends table %+v", f.Backends)
	}
	if strings.Join(f.Tiers, ",") != "small,large" {
		t.Errorf("tiers table %v", f.Tiers)
	}
	if f.Dropped != "0" {
		t.Errorf("recorder dropped shows %q", f.Dropped)
	}
	if f.Charts["chart-requests"] == 0 || f.Charts["chart-cost"] == 0 || f.Charts["chart-latency"] < 6 {
		t.Errorf("charts drew too little: %v", f.Charts)
	}
	// The per-minute series the charts draw add up to the totals shown.
	var seriesReq float64
	for _, p := range stats["series"].([]any) {
		n, _ := toFloat(p.(map[string]any)["requests"])
		seriesReq += n
	}
	drawn := evalJS[float64](t, ctx, `[...document.querySelectorAll('#chart-requests rect.bar.k-req')].length`)
	if points := len(stats["series"].([]any)); seriesReq != float64(sent) || points < rounds-1 || drawn != float64(points) {
		t.Errorf("series sum %v (sent %d), %v request bars for %d points", seriesReq, sent, drawn, len(stats["series"].([]any)))
	}
	saveScreenshot(t, ctx, "dashboard-e2e.png")
}

// TestDashboardWithoutRedis serves the page and the admin API on the API
// listener of a gateway that has no Redis: the page says statistics need it
// and still shows live backend health.
func TestDashboardWithoutRedis(t *testing.T) {
	chromiumPath(t)
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	_, largeURL := simServer(t, sim.Config{Model: "large-model"})
	cfg := testConfig(t, []string{smallURL}, []string{largeURL})
	token := fmt.Sprintf("dash-%x", rand.Uint64())
	env := fmt.Sprintf("CASCADE_TEST_DASHBOARD_TOKEN_%X", rand.Uint32())
	t.Setenv(env, token)
	cfg.Admin.TokenEnv = env
	_, base := startGateway(t, cfg, Options{})
	client := sdkClient(base)
	if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi")); err != nil {
		t.Fatal(err)
	}
	ctx := newBrowser(t, 1366, 768)

	run(t, ctx, chromedp.Navigate(base+"/dashboard#token="+token))
	f := waitRendered(t, ctx, 0)
	if f.BannerState != "error" || !strings.Contains(f.Banner, "Statistics unavailable (HTTP 503)") || !strings.Contains(f.Banner, "redis.url") {
		t.Fatalf("banner %q (%s)", f.Banner, f.BannerState)
	}
	if f.Values["kpi-requests"] != "" || f.Empty["chart-cost"] != "Statistics unavailable" {
		t.Fatalf("figures shown without stats: %v %v", f.Values, f.Empty)
	}
	if len(f.Backends) != 2 || f.Backends[0]["breaker"] != "closed" {
		t.Fatalf("backend health should show without Redis: %+v", f.Backends)
	}
	saveScreenshot(t, ctx, "dashboard-no-redis.png")

	// With the token variable emptied the admin API is off for everyone; the
	// page passes the gateway's reason on and does not ask for another token.
	t.Setenv(env, "")
	f = refreshAndRead(t, ctx)
	if !strings.Contains(f.Banner, "(HTTP 401): the admin API is disabled") || strings.Contains(f.Banner, "Enter a valid token") || !f.TokenForm {
		t.Fatalf("admin API disabled: banner %q, form %v", f.Banner, f.TokenForm)
	}
}

// countingRecorder counts the records it passes on.
type countingRecorder struct {
	n    atomic.Int64
	next *costing.RedisRecorder
}

func (c *countingRecorder) Record(r costing.Record) {
	c.next.Record(r)
	c.n.Add(1)
}

// Stats keeps the recorder's counters visible to /admin/stats.
func (c *countingRecorder) Stats() costing.RecorderStats { return c.next.Stats() }

// adminStats reads GET /admin/stats?window=1h&by=tier.
func adminStats(t *testing.T, admin, token string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, admin+"/admin/stats?window=1h&by=tier", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /admin/stats: %d %v %v", resp.StatusCode, out, err)
	}
	return out
}
