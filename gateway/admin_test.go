package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/router"
)

// adminToken sets a fresh admin token in a per-test environment variable and
// points cfg at it.
func adminToken(t *testing.T, cfg *config.Config) string {
	t.Helper()
	env := fmt.Sprintf("CASCADE_TEST_ADMIN_%d", rand.Uint64())
	tok := fmt.Sprintf("tok-%x", rand.Uint64())
	t.Setenv(env, tok)
	cfg.Admin.TokenEnv = env
	return tok
}

// adminDo sends an admin request and returns the status and body.
func adminDo(t *testing.T, method, url, token, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// openAIError decodes an OpenAI-shaped error body, failing if it is not one.
func openAIError(t *testing.T, b []byte) (msg, typ, code string) {
	t.Helper()
	var e struct {
		Error *struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" {
		t.Fatalf("not an OpenAI error body: %s", b)
	}
	if e.Error.Code != nil {
		code = *e.Error.Code
	}
	return e.Error.Message, e.Error.Type, code
}

func waitUntil(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAdminAuth(t *testing.T) {
	_, url := simServer(t, sim.Config{Model: "m"})

	t.Run("no token configured", func(t *testing.T) {
		_, base := startGateway(t, testConfig(t, []string{url}, []string{url}), Options{})
		status, body := adminDo(t, "GET", base+"/admin/config", "anything", "")
		if status != 401 {
			t.Fatalf("status %d, want 401", status)
		}
		if msg, _, code := openAIError(t, body); !strings.Contains(msg, "admin.token_env") || code != "invalid_api_key" {
			t.Fatalf("message %q (code %q) should say to set admin.token_env", msg, code)
		}
	})

	t.Run("token env named but empty", func(t *testing.T) {
		cfg := testConfig(t, []string{url}, []string{url})
		cfg.Admin.TokenEnv = "CASCADE_TEST_ADMIN_UNSET_VARIABLE"
		_, base := startGateway(t, cfg, Options{})
		status, body := adminDo(t, "GET", base+"/admin/backends", "", "")
		if msg, _, _ := openAIError(t, body); status != 401 || !strings.Contains(msg, "CASCADE_TEST_ADMIN_UNSET_VARIABLE") {
			t.Fatalf("status %d, message %q should name the empty variable", status, msg)
		}
	})

	t.Run("token configured", func(t *testing.T) {
		cfg := testConfig(t, []string{url}, []string{url})
		tok := adminToken(t, cfg)
		_, base := startGateway(t, cfg, Options{})
		for _, path := range []string{"/admin/config", "/admin/backends", "/admin/stats"} {
			for _, bad := range []string{"", tok + "x", tok[:len(tok)-1], "Basic " + tok} {
				status, body := adminDo(t, "GET", base+path, bad, "")
				if status != 401 {
					t.Fatalf("GET %s with token %q: status %d, want 401", path, bad, status)
				}
				openAIError(t, body)
			}
		}
		if status, body := adminDo(t, "POST", base+"/admin/reload", "wrong", ""); status != 401 {
			t.Fatalf("POST /admin/reload with a wrong token: %d %s", status, body)
		}
		for _, path := range []string{"/admin/config", "/admin/backends"} {
			if status, body := adminDo(t, "GET", base+path, tok, ""); status != 200 {
				t.Fatalf("GET %s with the token: %d %s", path, status, body)
			}
		}
		// The scheme is case-insensitive.
		req, _ := http.NewRequest("GET", base+"/admin/config", nil)
		req.Header.Set("Authorization", "bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("lower-case bearer: %d", resp.StatusCode)
		}
	})
}

func TestAdminConfigRedacted(t *testing.T) {
	_, url := simServer(t, sim.Config{Model: "m"})
	cfg := testConfig(t, []string{url}, []string{url})
	tok := adminToken(t, cfg)
	t.Setenv("CASCADE_TEST_UPSTREAM_KEY", "sk-upstream-very-secret")
	cfg.Tiers[1].Endpoints[0].APIKeyEnv = "CASCADE_TEST_UPSTREAM_KEY"
	cfg.Tiers[0].Endpoints[0].URL = strings.Replace(url, "http://", "http://user:endpoint-pass@", 1)
	cfg.Redis.URL = "redis://:redis-pass-123@127.0.0.1:6379/0"
	cfg.Telemetry.OTLPEndpoint = "https://otel:otlp-pass@collector:4318"
	g, base := startGateway(t, cfg, Options{})

	status, body := adminDo(t, "GET", base+"/admin/config", tok, "")
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	for _, secret := range []string{tok, "sk-upstream-very-secret", "endpoint-pass", "redis-pass-123", "otlp-pass"} {
		if strings.Contains(string(body), secret) {
			t.Fatalf("/admin/config leaks %q:\n%s", secret, body)
		}
	}
	var got struct {
		Version    string         `json:"version"`
		ConfigFile string         `json:"config_file"`
		Config     map[string]any `json:"config"`
		LastReload ReloadResult   `json:"last_reload"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if got.Version != ConfigVersion(cfg) || !strings.HasPrefix(got.Version, "sha256:") || len(got.Version) != len("sha256:")+64 {
		t.Fatalf("version %q, want %q", got.Version, ConfigVersion(cfg))
	}
	if !got.LastReload.OK || got.LastReload.Version != got.Version {
		t.Fatalf("last reload %+v", got.LastReload)
	}
	redisURL := got.Config["redis"].(map[string]any)["url"]
	if redisURL != "redis://:REDACTED@127.0.0.1:6379/0" {
		t.Fatalf("redis.url shown as %v", redisURL)
	}
	tiers := got.Config["tiers"].([]any)
	large := tiers[1].(map[string]any)["endpoints"].([]any)[0].(map[string]any)
	if large["api_key_env"] != "CASCADE_TEST_UPSTREAM_KEY" {
		t.Fatalf("the key's variable name should be shown: %v", large)
	}
	if got.Config["admin"].(map[string]any)["token_env"] != cfg.Admin.TokenEnv {
		t.Fatalf("admin.token_env should be shown: %v", got.Config["admin"])
	}
	if got.Config["routing"].(map[string]any)["threshold"] != cfg.Routing.Threshold {
		t.Fatalf("routing section: %v", got.Config["routing"])
	}

	status, body = adminDo(t, "GET", base+"/admin/config?format=yaml", tok, "")
	var y map[string]any
	if status != 200 || yaml.Unmarshal(body, &y) != nil || y["version"] != got.Version {
		t.Fatalf("yaml: %d %s", status, body)
	}
	if strings.Contains(string(body), "redis-pass-123") {
		t.Fatal("yaml leaks the redis password")
	}
	_ = g
}

// /admin/config is the effective configuration: defaults filled in, and
// only fields marked secret redacted (decode_tokens_per_sec is no secret
// although its name contains "token").
func TestAdminConfigEffective(t *testing.T) {
	cfg, err := config.Parse([]byte(`
tiers:
  - name: small
    endpoints: [{url: "http://127.0.0.1:1/v1", model: small-model}]
    cost: {gpu: {gpus: 1, usd_per_gpu_hour: 2.5, watts_per_gpu: 500, prefill_tokens_per_sec: 50000, decode_tokens_per_sec: 5000}}
`))
	if err != nil {
		t.Fatal(err)
	}
	tok := adminToken(t, cfg)
	_, base := startGateway(t, cfg, Options{})
	status, body := adminDo(t, "GET", base+"/admin/config", tok, "")
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var got struct {
		Config struct {
			MaxJSONDepth int `json:"max_json_depth"`
			Server       struct {
				ReadHeaderTimeout string `json:"read_header_timeout"`
				MaxHeaderBytes    int    `json:"max_header_bytes"`
			} `json:"server"`
			Fallback map[string]any `json:"fallback"`
			Scrape   struct {
				Interval string `json:"interval"`
			} `json:"scrape"`
			Tiers []struct {
				Endpoints []struct {
					Weight int `json:"weight"`
				} `json:"endpoints"`
				Cost struct {
					GPU map[string]any `json:"gpu"`
				} `json:"cost"`
			} `json:"tiers"`
		} `json:"config"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	c := got.Config
	gpu := c.Tiers[0].Cost.GPU
	for _, chk := range []struct {
		name string
		ok   bool
	}{
		{"decode_tokens_per_sec", gpu["decode_tokens_per_sec"] == 5000.0},
		{"prefill_tokens_per_sec", gpu["prefill_tokens_per_sec"] == 50000.0},
		{"pue", gpu["pue"] == 1.2},
		{"weight", c.Tiers[0].Endpoints[0].Weight == 1},
		{"fallback", c.Fallback["small_to_large"] == true && c.Fallback["large_to_small"] == true},
		{"scrape.interval", c.Scrape.Interval == "5s"},
		{"max_json_depth", c.MaxJSONDepth == 64},
		{"server", c.Server.ReadHeaderTimeout == "10s" && c.Server.MaxHeaderBytes == 16384},
	} {
		if !chk.ok {
			t.Errorf("%s not shown as effective: %s", chk.name, body)
		}
	}
	if strings.Contains(string(body), "REDACTED") {
		t.Fatalf("nothing secret in this config, yet: %s", body)
	}
}

// TestAdminBackendsShape checks GET /admin/backends against the documented
// schema, with load scraped from simulators.
func TestAdminBackendsShape(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model"})
	_, largeURL := simServer(t, sim.Config{Model: "large-model"})
	cfg := testConfig(t, []string{smallURL}, []string{largeURL})
	cfg.Scrape.Interval = 20 * time.Millisecond
	tok := adminToken(t, cfg)
	_, base := startGateway(t, cfg, Options{})
	client := sdkClient(base)
	if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi")); err != nil {
		t.Fatal(err)
	}
	_ = small

	type loadShape struct {
		Running      *float64 `json:"running"`
		Waiting      *float64 `json:"waiting"`
		KVCacheUsage *float64 `json:"kv_cache_usage"`
		ScrapedAt    *string  `json:"scraped_at"`
		Error        *string  `json:"error"`
	}
	type epShape struct {
		Tier      string     `json:"tier"`
		URL       string     `json:"url"`
		Model     string     `json:"model"`
		Weight    *int       `json:"weight"`
		Available *bool      `json:"available"`
		Breaker   string     `json:"breaker"`
		InFlight  *int64     `json:"in_flight"`
		LatencyMS *float64   `json:"latency_ms"`
		ErrorRate *float64   `json:"error_rate"`
		Load      *loadShape `json:"load"`
	}
	var eps []epShape
	var raw []map[string]any
	waitUntil(t, func() bool {
		status, body := adminDo(t, "GET", base+"/admin/backends", tok, "")
		if status != 200 {
			t.Fatalf("status %d: %s", status, body)
		}
		var out struct {
			Endpoints []epShape `json:"endpoints"`
		}
		var rawOut struct {
			Endpoints []map[string]any `json:"endpoints"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatal(err)
		}
		json.Unmarshal(body, &rawOut)
		eps, raw = out.Endpoints, rawOut.Endpoints
		for _, e := range eps {
			if e.Load == nil || e.Load.ScrapedAt == nil {
				return false
			}
		}
		return len(eps) == 2
	}, "both endpoints scraped")

	want := []string{"available", "breaker", "error_rate", "in_flight", "latency_ms", "load", "model", "tier", "url", "weight"}
	for _, r := range raw {
		for _, k := range want {
			if _, ok := r[k]; !ok {
				t.Fatalf("endpoint lacks %q: %v", k, r)
			}
		}
		for _, k := range []string{"running", "waiting", "kv_cache_usage", "scraped_at", "error"} {
			if _, ok := r["load"].(map[string]any)[k]; !ok {
				t.Fatalf("load lacks %q: %v", k, r["load"])
			}
		}
	}
	s, l := eps[0], eps[1]
	if s.Tier != "small" || s.URL != smallURL || s.Model != "small-model" || *s.Weight != 1 || !*s.Available || s.Breaker != "closed" || *s.InFlight != 0 {
		t.Fatalf("small endpoint: %+v", s)
	}
	if l.Tier != "large" || l.URL != largeURL {
		t.Fatalf("large endpoint: %+v", l)
	}
	if *s.LatencyMS <= 0 || *s.ErrorRate != 0 {
		t.Fatalf("small endpoint served a request: latency %v, error rate %v", *s.LatencyMS, *s.ErrorRate)
	}
	if *l.LatencyMS != 0 {
		t.Fatalf("large endpoint served nothing but shows latency %v", *l.LatencyMS)
	}
	if _, err := time.Parse(time.RFC3339Nano, *s.Load.ScrapedAt); err != nil || *s.Load.Error != "" {
		t.Fatalf("load: %+v", *s.Load)
	}
}

func TestAdminSeparateListener(t *testing.T) {
	_, url := simServer(t, sim.Config{Model: "m"})
	cfg := testConfig(t, []string{url}, []string{url})
	cfg.Admin.Listen = "127.0.0.1:0"
	tok := adminToken(t, cfg)
	g, base := startGateway(t, cfg, Options{})
	if g.AdminApp() == nil {
		t.Fatal("no admin app with admin.listen set")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.AdminApp().Listener(ln)
	admin := "http://" + ln.Addr().String()
	if status, _ := adminDo(t, "GET", base+"/admin/config", tok, ""); status != 404 {
		t.Fatalf("API listener serves /admin with admin.listen set: %d", status)
	}
	if status, body := adminDo(t, "GET", admin+"/admin/config", tok, ""); status != 200 {
		t.Fatalf("admin listener: %d %s", status, body)
	}
	if status, _ := adminDo(t, "GET", admin+"/admin/config", "", ""); status != 401 {
		t.Fatalf("admin listener without token: %d", status)
	}
	if status, body := adminDo(t, "GET", admin+"/v1/models", "", ""); status != 404 {
		t.Fatalf("admin listener serves the API: %d %s", status, body)
	}
}

func TestAdminReloadEndpoint(t *testing.T) {
	_, url := simServer(t, sim.Config{Model: "m"})
	cfg := testConfig(t, []string{url}, []string{url})
	tok := adminToken(t, cfg)
	g, base := startGateway(t, cfg, Options{})

	status, body := adminDo(t, "POST", base+"/admin/reload", tok, "")
	if msg, _, _ := openAIError(t, body); status != 409 || !strings.Contains(msg, "config file") {
		t.Fatalf("reload without a file: %d %s", status, body)
	}

	path := filepath.Join(t.TempDir(), "cascade.yaml")
	g.SetConfigFile(path)
	writeConfig(t, path, tok, cfg, url, 0.25, "")
	status, body = adminDo(t, "POST", base+"/admin/reload", tok, "")
	if status != 200 {
		t.Fatalf("reload: %d %s", status, body)
	}
	if th := g.snap.Load().cfg.Routing.Threshold; th != 0.25 {
		t.Fatalf("threshold after reload %v", th)
	}
	good := ConfigVersion(g.snap.Load().cfg)

	// A broken file is refused; the running configuration stays.
	writeConfig(t, path, tok, cfg, url, 0.25, "routing:\n  threshold: 7\n")
	status, body = adminDo(t, "POST", base+"/admin/reload", tok, "")
	if msg, _, code := openAIError(t, body); status != 422 || code != "invalid_config" || !strings.Contains(msg, "unchanged") {
		t.Fatalf("bad reload: %d %s", status, body)
	}
	status, body = adminDo(t, "GET", base+"/admin/config", tok, "")
	var got struct {
		Version    string       `json:"version"`
		LastReload ReloadResult `json:"last_reload"`
	}
	if err := json.Unmarshal(body, &got); err != nil || status != 200 {
		t.Fatal(status, err)
	}
	if got.Version != good || got.LastReload.OK || !strings.Contains(got.LastReload.Error, "yaml") && !strings.Contains(got.LastReload.Error, "threshold") {
		t.Fatalf("after a failed reload: %+v", got)
	}
}

// writeConfig writes a two-tier YAML config with the given threshold;
// extra is appended verbatim.
func writeConfig(t *testing.T, path, tok string, base *config.Config, url string, threshold float64, extra string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "admin:\n  token_env: %s\nrouting:\n  threshold: %g\n", base.Admin.TokenEnv, threshold)
	fmt.Fprintf(&b, "breaker:\n  open_for: %s\n  consecutive_failures: %d\n", base.Breaker.OpenFor, base.Breaker.ConsecutiveFailures)
	fmt.Fprintf(&b, "tiers:\n  - name: small\n    endpoints:\n      - {url: %q, model: small-model}\n  - name: large\n    endpoints:\n      - {url: %q, model: large-model}\n", url, url)
	b.WriteString(extra)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestAdminStats reads stats back through the API after requests went
// through the gateway into the real Redis recorder.
func TestAdminStats(t *testing.T) {
	_, url := simServer(t, sim.Config{Model: "m"})
	cfg := testConfig(t, []string{url}, []string{url})
	tok := adminToken(t, cfg)

	t.Run("no redis", func(t *testing.T) {
		_, base := startGateway(t, cfg, Options{})
		status, body := adminDo(t, "GET", base+"/admin/stats", tok, "")
		if msg, _, _ := openAIError(t, body); status != 503 || !strings.Contains(msg, "redis.url") {
			t.Fatalf("%d %s", status, body)
		}
	})

	rdb, prefix := testRedis(t)
	cfg.Redis.Prefix = prefix
	rec := costing.NewRedisRecorder(rdb, prefix, cfg.Recorder)
	_, base := startGateway(t, cfg, Options{Redis: rdb, Recorder: rec})
	client := sdkClient(base)
	for i := 0; i < 3; i++ {
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi")); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, func() bool { return rec.Stats().Written == 3 }, "records written")
	defer rec.Close(context.Background())

	status, body := adminDo(t, "GET", base+"/admin/stats?window=1h&by=tier", tok, "")
	if status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	var rep costing.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Total.Requests != 3 || rep.Groups["small"].Requests != 3 || rep.Window != "1h" || rep.By != "tier" {
		t.Fatalf("stats: %s", body)
	}
	if rep.Recorder == nil || rep.Recorder.Written != 3 || rep.Routing == nil || rep.Routing.Threshold != config.Default().Routing.Threshold || rep.Routing.TargetEscalationRate != nil {
		t.Fatalf("recorder/routing: %s", body)
	}
	for _, q := range []string{"window=banana", "window=800h", "by=color"} {
		status, body := adminDo(t, "GET", base+"/admin/stats?"+q, tok, "")
		if status != 400 {
			t.Fatalf("%s: %d %s", q, status, body)
		}
		openAIError(t, body)
	}
}

func TestAdminRouteDryRun(t *testing.T) {
	small, url := simServer(t, sim.Config{Model: "m"})
	cfg := testConfig(t, []string{url}, []string{url})
	tok := adminToken(t, cfg)
	g, base := startGateway(t, cfg, Options{})
	long := strings.Repeat("Prove that the sequence converges and derive its limit step by step. ", 80)

	type answer struct {
		Tier      string           `json:"tier"`
		Score     float64          `json:"score"`
		Threshold float64          `json:"threshold"`
		Escalated bool             `json:"escalated"`
		Reason    string           `json:"reason"`
		Reasons   []map[string]any `json:"reasons"`
	}
	ask := func(body string) answer {
		t.Helper()
		status, b := adminDo(t, "POST", base+"/admin/route", tok, body)
		if status != 200 {
			t.Fatalf("%d %s", status, b)
		}
		var a answer
		if err := json.Unmarshal(b, &a); err != nil || a.Reasons == nil {
			t.Fatalf("%v: %s", err, b)
		}
		return a
	}
	before := small.Stats().Requests
	chat := func(model, prompt string) string {
		b, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": prompt}}})
		return string(b)
	}
	// The dry run agrees with the policy on the request path.
	for _, prompt := range []string{"What is 2+2?", long} {
		got := ask(chat("auto", prompt))
		req, err := parseRequest([]byte(chat("auto", prompt)), true, 64)
		if err != nil {
			t.Fatal(err)
		}
		d := g.snap.Load().policy.Decide(&req.Input)
		if got.Score != d.Score || got.Tier != d.Tier || got.Escalated != d.Escalated || got.Threshold != d.Threshold || got.Reason != d.Reason {
			t.Fatalf("dry run %+v, policy %+v", got, d)
		}
		if _, learned := g.snap.Load().policy.Scorer().(*router.Learned); learned && len(got.Reasons) == 0 {
			t.Fatal("the scorer explains itself but the dry run gave no reasons")
		}
	}
	// Thresholds 0 and 1 force the decision either way.
	for _, th := range []float64{0, 1} {
		c := *cfg
		c.Routing.Threshold = th
		if err := g.Apply(&c); err != nil {
			t.Fatal(err)
		}
		got := ask(chat("auto", long))
		if got.Threshold != th || got.Escalated != (th == 0) || (th == 0) != (got.Tier == "large") || (th == 0) != (got.Reason == "score") {
			t.Fatalf("threshold %v: %+v", th, got)
		}
	}
	pinned := ask(chat("small", long))
	if pinned.Tier != "small" || pinned.Escalated || pinned.Reason != "pinned" {
		t.Fatalf("pinned: %+v", pinned)
	}
	hard := ask(chat("auto", long))
	if small.Stats().Requests != before {
		t.Fatal("a dry run called a backend")
	}
	if status, b := adminDo(t, "POST", base+"/admin/route", tok, `{"model":"nope","messages":[{"role":"user","content":"x"}]}`); status != 404 {
		t.Fatalf("unknown model: %d %s", status, b)
	}
	if status, b := adminDo(t, "POST", base+"/admin/route", tok, `{"messages":`); status != 400 {
		t.Fatalf("bad body: %d %s", status, b)
	}
	if status, _ := adminDo(t, "POST", base+"/admin/route", "", chat("auto", "x")); status != 401 {
		t.Fatal("dry run without the token")
	}
	// Reasons, when the scorer explains itself, are sorted by magnitude.
	mags := make([]float64, len(hard.Reasons))
	for i, r := range hard.Reasons {
		c, _ := r["contribution"].(float64)
		mags[i] = -math.Abs(c)
	}
	if !sort.Float64sAreSorted(mags) {
		t.Fatalf("reasons not sorted by magnitude: %v", hard.Reasons)
	}
}

// A field tagged secret:"true" is replaced whole, at any depth; its
// neighbours are not, whatever their names.
func TestRedactSecretsByTag(t *testing.T) {
	type inner struct {
		Key        string `yaml:"key" secret:"true"`
		Empty      string `yaml:"empty" secret:"true"`
		TokenCount int    `yaml:"token_count"`
		URL        string `yaml:"url" secret:"userinfo"`
	}
	type outer struct {
		Items []inner          `yaml:"items"`
		ByID  map[string]inner `yaml:"by_id"`
		Ptr   *inner           `yaml:"ptr"`
	}
	in := inner{Key: "s3cret", TokenCount: 7, URL: "redis://u:pw@h:1/0"}
	doc := map[string]any{}
	b, _ := yaml.Marshal(outer{Items: []inner{in}, ByID: map[string]inner{"a": in}, Ptr: &in})
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	redactSecrets(reflect.TypeOf(outer{}), doc)
	out, _ := json.Marshal(doc)
	if strings.Contains(string(out), "s3cret") || strings.Contains(string(out), "pw@") {
		t.Fatalf("secret left: %s", out)
	}
	if strings.Count(string(out), `"key":"REDACTED"`) != 3 || strings.Count(string(out), `"token_count":7`) != 3 ||
		strings.Count(string(out), `"empty":""`) != 3 || strings.Count(string(out), "u:REDACTED@h") != 3 {
		t.Fatalf("unexpected redaction: %s", out)
	}
}
