package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3/option"
	"github.com/sony/gobreaker/v2"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
)

// reloadCounts reads cascade.config.reloads by result.
func reloadCounts(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "cascade.config.reloads" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				v, _ := dp.Attributes.Value("result")
				out[v.AsString()] += dp.Value
			}
		}
	}
	return out
}

// withTiers returns a copy of base with the given small-tier endpoints and
// routing threshold.
func withTiers(base *config.Config, small []string, threshold float64) *config.Config {
	c := *base
	c.Tiers = []config.Tier{{Name: "small"}, {Name: "large", Endpoints: base.Tiers[1].Endpoints}}
	for _, u := range small {
		c.Tiers[0].Endpoints = append(c.Tiers[0].Endpoints, config.Endpoint{URL: u, Model: "small-model", Weight: 1})
	}
	c.Routing.Threshold = threshold
	return &c
}

// TestReloadUnderLoad reloads valid and invalid configurations (endpoints
// added and removed, thresholds changed) while several clients stream and
// not: no client request fails, every valid reload applies, every invalid one
// is refused and counted, and the last configuration routes as it says.
func TestReloadUnderLoad(t *testing.T) {
	simCfg := func(model string) sim.Config { return sim.Config{Model: model, MinTokens: 4, MaxTokens: 8} }
	s1, u1 := simServer(t, simCfg("small-model"))
	s2, u2 := simServer(t, simCfg("small-model"))
	s3, u3 := simServer(t, simCfg("small-model"))
	large, ul := simServer(t, simCfg("large-model"))
	base := testConfig(t, []string{u1, u2}, []string{ul})
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	g, gwURL := startGateway(t, base, Options{MeterProvider: mp})
	client := sdkClient(gwURL)
	long := strings.Repeat("Prove that the sequence converges and derive its limit step by step. ", 80)

	var served, failed atomic.Int64
	var errMu sync.Mutex
	var errs []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				prompt := "What is 2+2?"
				if i%3 == 0 {
					prompt = long
				}
				var err error
				if (w+i)%2 == 0 {
					_, err = client.Chat.Completions.New(context.Background(), chatParams("auto", prompt))
				} else {
					st := client.Chat.Completions.NewStreaming(context.Background(), chatParams("auto", prompt))
					chunks := 0
					for st.Next() {
						chunks++
					}
					err = st.Err()
					st.Close()
					if err == nil && chunks == 0 {
						err = errEmptyStream
					}
				}
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					errs = append(errs, err.Error())
					errMu.Unlock()
					continue
				}
				served.Add(1)
			}
		}(w)
	}

	badThreshold := withTiers(base, []string{u1}, 0.5)
	badThreshold.Routing.Threshold = 2
	noEndpoints := withTiers(base, nil, 0.5)
	dupTier := withTiers(base, []string{u1}, 0.5)
	dupTier.Tiers[1].Name = "small"
	badURL := withTiers(base, []string{"ftp://" + strings.TrimPrefix(u1, "http://")}, 0.5)
	steps := []struct {
		cfg   *config.Config
		valid bool
	}{
		{withTiers(base, []string{u1, u3}, 0), true}, // add s3, drop s2, everything escalates
		{badThreshold, false},
		{withTiers(base, []string{u2, u3}, 1), true}, // drop s1, nothing escalates
		{noEndpoints, false},
		{withTiers(base, []string{u3, u1, u2}, 0.4), true},
		{dupTier, false},
		{withTiers(base, []string{u2}, 0.6), true},
		{badURL, false},
	}
	path := filepath.Join(t.TempDir(), "cascade.yaml")
	g.SetConfigFile(path)
	wantOK, wantFail := 0, 0
	for round := 0; round < 4; round++ {
		for _, st := range steps {
			before := served.Load()
			err := g.Apply(st.cfg)
			if (err == nil) != st.valid {
				t.Fatalf("Apply valid=%v returned %v", st.valid, err)
			}
			if st.valid {
				wantOK++
			} else {
				wantFail++
			}
			// Let some requests through on this configuration.
			waitUntil(t, func() bool { return served.Load() >= before+3 || failed.Load() > 0 }, "requests to flow")
		}
		// A file that does not parse is refused too.
		os.WriteFile(path, []byte("tiers: [unclosed\n"), 0o644)
		if _, err := g.ReloadFile(); err == nil {
			t.Fatal("a broken file reloaded")
		}
		wantFail++
	}
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d client requests failed during reloads; first: %s", n, n+served.Load(), errs[0])
	}
	t.Logf("%d requests served during %d reloads", served.Load(), wantOK+wantFail)
	if got := reloadCounts(t, reader); got["success"] != int64(wantOK) || got["failure"] != int64(wantFail) {
		t.Fatalf("cascade.config.reloads = %v, want success %d, failure %d", got, wantOK, wantFail)
	}

	// The new routing takes effect: threshold 0 escalates everything and
	// endpoints left out get no new traffic.
	if err := g.Apply(withTiers(base, []string{u1}, 0)); err != nil {
		t.Fatal(err)
	}
	removed2, removed3 := s2.Stats().Requests, s3.Stats().Requests
	large0 := large.Stats().Requests
	for i := 0; i < 10; i++ {
		var hr *http.Response
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("auto", "What is 2+2?"), option.WithResponseInto(&hr)); err != nil {
			t.Fatal(err)
		}
		if hr.Header.Get(headerTier) != "large" || hr.Header.Get(headerEscalated) != "score" {
			t.Fatalf("threshold 0: tier %q escalated %q", hr.Header.Get(headerTier), hr.Header.Get(headerEscalated))
		}
	}
	if large.Stats().Requests != large0+10 {
		t.Fatalf("large served %d of 10", large.Stats().Requests-large0)
	}
	if err := g.Apply(withTiers(base, []string{u1}, 1)); err != nil {
		t.Fatal(err)
	}
	small1 := s1.Stats().Requests
	for i := 0; i < 10; i++ {
		var hr *http.Response
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("auto", long), option.WithResponseInto(&hr)); err != nil {
			t.Fatal(err)
		}
		if hr.Header.Get(headerTier) != "small" {
			t.Fatalf("threshold 1: tier %q", hr.Header.Get(headerTier))
		}
	}
	if s1.Stats().Requests != small1+10 || s2.Stats().Requests != removed2 || s3.Stats().Requests != removed3 {
		t.Fatalf("after removing s2 and s3: s1 +%d, s2 +%d, s3 +%d; want 10, 0, 0",
			s1.Stats().Requests-small1, s2.Stats().Requests-removed2, s3.Stats().Requests-removed3)
	}
}

var errEmptyStream = &apiError{Message: "stream ended without a chunk"}

// TestReloadKeepsBreakerState trips one endpoint's breaker, reloads a
// configuration that keeps the endpoint (other settings changed, another
// endpoint added) and checks the breaker is still open on the same endpoint.
func TestReloadKeepsBreakerState(t *testing.T) {
	bad, badURL := simServer(t, sim.Config{Model: "small-model"})
	_, goodURL := simServer(t, sim.Config{Model: "small-model"})
	_, otherURL := simServer(t, sim.Config{Model: "small-model"})
	bad.SetFaults(1, http.StatusServiceUnavailable, 0, 0)
	cfg := testConfig(t, []string{badURL, goodURL}, []string{goodURL})
	cfg.Breaker.OpenFor = time.Hour
	tok := adminToken(t, cfg)
	g, base := startGateway(t, cfg, Options{})
	client := sdkClient(base)
	badEp := g.snap.Load().pools["small"].Endpoints[0]
	waitUntil(t, func() bool {
		// 503s are retried on the good endpoint: the client never sees them.
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi")); err != nil {
			t.Fatal(err)
		}
		return badEp.BreakerState() == gobreaker.StateOpen
	}, "the bad endpoint's breaker to open")

	if err := g.Apply(withTiers(cfg, []string{goodURL, badURL, otherURL}, 0.3)); err != nil {
		t.Fatal(err)
	}
	var kept bool
	for _, e := range g.snap.Load().pools["small"].Endpoints {
		if e.URL == badURL {
			kept = e == badEp && e.BreakerState() == gobreaker.StateOpen
		}
	}
	if !kept {
		t.Fatal("the reload rebuilt the unchanged endpoint; its open breaker was lost")
	}
	status, body := adminDo(t, "GET", base+"/admin/backends", tok, "")
	var out struct {
		Endpoints []struct {
			Tier, URL, Breaker string
			Available          bool
			ErrorRate          float64 `json:"error_rate"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(body, &out); err != nil || status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	for _, e := range out.Endpoints {
		open := e.Tier == "small" && e.URL == badURL
		if (e.Breaker == "open") != open || e.Available == open {
			t.Fatalf("endpoint %s/%s: breaker %s, available %v", e.Tier, e.URL, e.Breaker, e.Available)
		}
		if open && e.ErrorRate <= 0 {
			t.Fatalf("failing endpoint shows error rate %v", e.ErrorRate)
		}
	}
}

// TestReloadOnFileChange: replacing the config file the way editors do
// (write elsewhere, rename over it) reloads the gateway; a broken file is
// refused and the running configuration stays.
func TestReloadOnFileChange(t *testing.T) {
	_, url := simServer(t, sim.Config{Model: "m"})
	dir := t.TempDir()
	path := filepath.Join(dir, "cascade.yaml")
	base := testConfig(t, []string{url}, []string{url})
	writeConfig(t, path, "", base, url, 0.5, "")
	cfg, err := config.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := startGateway(t, cfg, Options{})
	g.SetConfigFile(path)
	ctx, cancel := context.WithCancel(context.Background())
	done, err := config.Watch(ctx, path, 20*time.Millisecond, func() { g.ReloadFile() }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); <-done }()

	tmp := filepath.Join(dir, ".cascade.yaml.tmp")
	writeConfig(t, tmp, "", base, url, 0.2, "")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	// The outcome is recorded right after the swap.
	waitUntil(t, func() bool {
		return g.snap.Load().cfg.Routing.Threshold == 0.2 && g.LastReload().Version == ConfigVersion(g.snap.Load().cfg)
	}, "the renamed file to be applied")
	if lr := g.LastReload(); !lr.OK {
		t.Fatalf("last reload %+v", lr)
	}

	writeConfig(t, path, "", base, url, 0.2, "unknown_key: 1\n")
	waitUntil(t, func() bool { return !g.LastReload().OK }, "the broken file to be refused")
	if !strings.Contains(g.LastReload().Error, "unknown_key") || g.snap.Load().cfg.Routing.Threshold != 0.2 {
		t.Fatalf("after a broken file: %+v, threshold %v", g.LastReload(), g.snap.Load().cfg.Routing.Threshold)
	}
}
