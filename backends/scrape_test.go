package backends

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
)

func TestParseLoad(t *testing.T) {
	cases := []struct {
		name, text string
		want       Load
	}{
		{"vllm", `# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
vllm:num_requests_waiting{model_name="llama"} 7
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.5
vllm:num_requests_running_extra 100
vllm:prompt_tokens_total{model_name="llama"} 12345
`, Load{Running: 5, Waiting: 7, KVCacheUsage: 0.5, Server: "vllm"}},
		{"vllm legacy cache name, label with brace and timestamp", `vllm:gpu_cache_usage_perc{model_name="a}b \"q\""} 0.75 1700000000000
vllm:num_requests_waiting 4
`, Load{Waiting: 4, KVCacheUsage: 0.75, Server: "vllm"}},
		{"tgi", "tgi_queue_size 6\ntgi_batch_current_size 12\ntgi_request_count 99\n", Load{Running: 12, Waiting: 6, Server: "tgi"}},
		{"llama.cpp", "llamacpp:requests_processing 1\nllamacpp:requests_deferred 3\nllamacpp:kv_cache_usage_ratio 0.1\n",
			Load{Running: 1, Waiting: 3, KVCacheUsage: 0.1, Server: "llamacpp"}},
		{"none of ours", "process_cpu_seconds_total 12\ngo_goroutines 7\n", Load{}},
		{"garbage values skipped", "vllm:num_requests_waiting NaN\nvllm:num_requests_running{x=\"1\"} abc\nvllm:num_requests_running{unterminated 3\nvllm:num_requests_running 2\n",
			Load{Running: 2, Server: "vllm"}},
		{"empty", "", Load{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLoad(strings.NewReader(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestQueueFromLoad(t *testing.T) {
	for _, tc := range []struct {
		l        Load
		inflight int64
		want     int64
	}{
		{Load{Running: 8, Waiting: 4}, 0, 12},
		{Load{Running: 8, Waiting: 4}, 5, 7}, // our own requests are counted live, not twice
		{Load{Running: 2}, 5, 0},             // never negative
	} {
		if got := queueFromLoad(tc.l, tc.inflight); got != tc.want {
			t.Errorf("queueFromLoad(%+v, %d) = %d, want %d", tc.l, tc.inflight, got, tc.want)
		}
	}
}

// loadSim holds n hanging requests on s (a simulator without a concurrency
// limit), so its metrics report n running, and returns a func releasing them.
func loadSim(t *testing.T, s *sim.Server, url string, n int) func() {
	t.Helper()
	s.SetFaults(0, 0, 1, 0) // every request hangs until its client goes away
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions",
				strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hold"}]}`))
			req.Header.Set("Content-Type", "application/json")
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	waitFor(t, func() bool { return s.Stats().Running == int64(n) }, "simulator to run the held requests")
	s.SetFaults(0, 0, 0, 0) // later requests are served normally
	return func() { cancel(); wg.Wait() }
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sendShare sends n requests through the pool, conc at a time, and returns
// how many each endpoint served.
func sendShare(t *testing.T, p *Pool, c *Client, n, conc int) map[*Endpoint]int {
	t.Helper()
	var mu sync.Mutex
	counts := map[*Endpoint]int{}
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
			resp, err := p.Send(context.Background(), c, &Request{Path: "/chat/completions", Body: func(*Endpoint) []byte { return body }}, 0)
			if err != nil {
				t.Error(err)
				return
			}
			var buf bytes.Buffer
			buf.ReadFrom(resp.Body)
			resp.Finish(nil)
			mu.Lock()
			counts[resp.Endpoint]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return counts
}

// TestScrapedQueueMovesTraffic loads one of two simulators with requests
// from elsewhere (another client, as another gateway replica would be):
// before its metrics are scraped the balancer splits traffic evenly, once
// they are it sends new requests to the idle one.
func TestScrapedQueueMovesTraffic(t *testing.T) {
	busy, idle := sim.New(sim.Config{Model: "m"}), sim.New(sim.Config{Model: "m"})
	busyTS, idleTS := httptest.NewServer(busy), httptest.NewServer(idle)
	defer idleTS.Close()
	defer busyTS.Close()
	defer busy.Close()

	cfg := config.Default()
	cfg.Tiers = []config.Tier{{Name: "s", Endpoints: []config.Endpoint{
		{URL: busyTS.URL + "/v1", Model: "m", Weight: 1}, {URL: idleTS.URL + "/v1", Model: "m", Weight: 1}}}}
	client := NewClient(cfg.Timeouts)
	defer client.CloseIdle()
	pool := NewRegistry(client).Pools(&cfg)["s"]
	busyEp, idleEp := pool.Endpoints[0], pool.Endpoints[1]

	release := loadSim(t, busy, busyTS.URL, 8)
	defer release()

	// Not scraped: the busy server's backlog is invisible, the split even.
	before := sendShare(t, pool, client, 100, 1)
	if before[busyEp] < 25 {
		t.Fatalf("without scraping the busy endpoint got %d of 100 requests; want an even split", before[busyEp])
	}

	sc := NewScraper()
	defer sc.Stop()
	sc.Update(pool.Endpoints, config.Scrape{Interval: 20 * time.Millisecond, Path: "/metrics"})
	waitFor(t, func() bool { return busyEp.Queue() == 8 && !idleEp.Load().ScrapedAt.IsZero() }, "the busy endpoint's queue to be scraped")
	if l := busyEp.Load(); l.Running != 8 || l.Server != "vllm" || l.Err != "" {
		t.Fatalf("busy load = %+v, want 8 running from vllm metrics", l)
	}

	after := sendShare(t, pool, client, 100, 4)
	t.Logf("busy endpoint's share of 100 requests: %d before scraping, %d after", before[busyEp], after[busyEp])
	if after[busyEp] > 5 {
		t.Fatalf("with a scraped queue of 8 the busy endpoint still got %d of 100 requests (idle: %d)", after[busyEp], after[idleEp])
	}
	if after[idleEp] < 95 {
		t.Fatalf("idle endpoint got %d of 100", after[idleEp])
	}
}

func TestScraperLifecycle(t *testing.T) {
	var mu sync.Mutex
	hits := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		mu.Unlock()
		if r.URL.Path == "/custom/metrics" {
			w.Write([]byte("vllm:num_requests_waiting 2\n"))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	eps := testEndpoints(2)
	eps[0].URL = srv.URL + "/v1"
	eps[1].URL = srv.URL + "/other/v1"
	goroutines := runtime.NumGoroutine()

	sc := NewScraper()
	sc.Update(eps, config.Scrape{Interval: 10 * time.Millisecond, Path: "/custom/metrics"})
	waitFor(t, func() bool { return eps[0].Queue() == 2 && eps[1].Queue() == 2 }, "both endpoints scraped")

	// An endpoint left out of the config stops being scraped and its queue clears.
	sc.Update(eps[:1], config.Scrape{Interval: 10 * time.Millisecond, Path: "/custom/metrics"})
	if eps[1].Queue() != 0 {
		t.Fatal("removed endpoint kept its scraped queue")
	}

	// A path without metrics is an error shown in the load, queue 0.
	sc.Update(eps[:1], config.Scrape{Interval: 10 * time.Millisecond, Path: "/nothing"})
	waitFor(t, func() bool { return strings.Contains(eps[0].Load().Err, "status 404") }, "the scrape error")
	if eps[0].Queue() != 0 {
		t.Fatal("failed scrape left a queue")
	}

	// Negative interval disables scraping.
	sc.Update(eps, config.Scrape{Interval: -1})
	mu.Lock()
	n := hits["/nothing"]
	mu.Unlock()
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	if hits["/nothing"] != n {
		t.Fatal("scraping continued with a negative interval")
	}
	mu.Unlock()

	sc.Update(eps, config.Scrape{Interval: 10 * time.Millisecond, Path: "/custom/metrics"})
	sc.Stop()
	sc.Update(eps, config.Scrape{Interval: 10 * time.Millisecond, Path: "/custom/metrics"}) // no-op after Stop
	waitFor(t, func() bool { return runtime.NumGoroutine() <= goroutines }, "scrape goroutines to end")
}

func TestEndpointLatencyAndErrorRate(t *testing.T) {
	fail := false
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		f := fail
		mu.Unlock()
		if f {
			http.Error(w, `{"error":{"message":"boom"}}`, http.StatusInternalServerError)
			return
		}
		w.Write([]byte(`{"choices":[]}`))
	}))
	defer srv.Close()
	cfg := config.Default()
	cfg.Breaker.ConsecutiveFailures = 1000
	cfg.Tiers = []config.Tier{{Name: "s", Endpoints: []config.Endpoint{{URL: srv.URL + "/v1", Model: "m", Weight: 1}}}}
	client := NewClient(cfg.Timeouts)
	defer client.CloseIdle()
	pool := NewRegistry(client).Pools(&cfg)["s"]
	e := pool.Endpoints[0]
	req := &Request{Path: "/chat/completions", Body: func(*Endpoint) []byte { return []byte(`{}`) }}
	send := func() {
		resp, err := pool.Send(context.Background(), client, req, 0)
		if err == nil {
			resp.Finish(nil)
		}
	}
	if e.LatencyMS() != 0 || e.ErrorRate() != 0 {
		t.Fatal("fresh endpoint has statistics")
	}
	for i := 0; i < 10; i++ {
		send()
	}
	if e.LatencyMS() <= 0 {
		t.Fatal("no latency recorded after successful requests")
	}
	if e.ErrorRate() != 0 {
		t.Fatalf("error rate %g after only successes", e.ErrorRate())
	}
	mu.Lock()
	fail = true
	mu.Unlock()
	for i := 0; i < 20; i++ {
		send()
	}
	r := e.ErrorRate()
	if r < 0.5 || r > 1 {
		t.Fatalf("error rate %g after 20 failures in a row; want most of the way to 1", r)
	}
	// A client going away is not the endpoint's failure.
	resp, err := func() (*Response, error) {
		mu.Lock()
		fail = false
		mu.Unlock()
		return pool.Send(context.Background(), client, req, 0)
	}()
	if err != nil {
		t.Fatal(err)
	}
	resp.Finish(context.Canceled)
	if e.ErrorRate() >= r {
		t.Fatalf("error rate rose from %g to %g on a cancelled request", r, e.ErrorRate())
	}
}

// BenchmarkParseLoad parses a simulator's full metrics page (vLLM names,
// histograms included), what one scrape costs the gateway.
func BenchmarkParseLoad(b *testing.B) {
	s := sim.New(sim.Config{Model: "m"})
	defer s.Close()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	page := rec.Body.Bytes()
	b.SetBytes(int64(len(page)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseLoad(bytes.NewReader(page)); err != nil {
			b.Fatal(err)
		}
	}
}
