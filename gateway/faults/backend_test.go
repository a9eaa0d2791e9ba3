package faults_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// The small tier's only backend is killed mid-run and started again on the
// same port: while it is down, small requests fall back to the large tier;
// with both down, clients get a clear 503; once restarted, small serves
// again. Every request is recorded once, as the client saw it.
func TestBackendKilledAndRestarted(t *testing.T) {
	t.Parallel()
	small := startSim(t, sim.Config{Model: "small-model"})
	large := startSim(t, sim.Config{Model: "large-model"})
	h := startHarness(t, twoTiers(t, []string{small.url()}, []string{large.url()}), sharedRedis)
	ctx := context.Background()

	phase := func(name string, n int, check func(r reply)) {
		t.Helper()
		for range n {
			r := h.chat(ctx, "small", "What is 2+2?")
			if r.err != nil {
				t.Fatalf("%s: %v", name, r.err)
			}
			check(r)
		}
	}
	served := func(tier, move string) func(reply) {
		return func(r reply) {
			t.Helper()
			if r.status != 200 || r.header.Get("X-Cascade-Tier") != tier || r.header.Get("X-Cascade-Fallback") != move || r.content == "" {
				t.Fatalf("request %s: status %d tier %q fallback %q (%s %s), want 200 from %s",
					r.id, r.status, r.header.Get("X-Cascade-Tier"), r.header.Get("X-Cascade-Fallback"), r.code, r.message, tier)
			}
			h.expect(r.id, servedWant(r))
		}
	}

	phase("both up", 5, served("small", ""))

	small.kill()
	phase("small killed", 10, served("large", "up"))

	large.kill()
	var retryAfter []string
	phase("both killed", 6, func(r reply) {
		t.Helper()
		if r.status != http.StatusServiceUnavailable || r.code != "backend_unavailable" || !strings.Contains(r.message, r.id) {
			t.Fatalf("request %s with every backend down: %d %q %q, want 503 backend_unavailable naming the request id", r.id, r.status, r.code, r.message)
		}
		checkNoAddress(t, r.message)
		retryAfter = append(retryAfter, r.header.Get("Retry-After"))
		h.expect(r.id, want{outcome: "upstream_error"})
	})
	t.Logf("503s with every backend down carried Retry-After %q", retryAfter)

	small.start()
	large.start()
	// The breakers were opened by the failures; once open_for (200ms)
	// passes, a probe gets through and small serves again.
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := h.chat(ctx, "small", "What is 2+2?")
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.status == 200 {
			h.expect(r.id, servedWant(r))
			if r.header.Get("X-Cascade-Tier") == "small" {
				break
			}
		} else {
			if r.status != http.StatusServiceUnavailable {
				t.Fatalf("after restart: %d %s", r.status, r.message)
			}
			h.expect(r.id, want{outcome: "upstream_error"})
		}
		if time.Now().After(deadline) {
			t.Fatal("small never served again after its backend restarted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	phase("restarted", 5, served("small", ""))

	recs := h.records()
	n := countOutcomes(recs)
	t.Logf("records by outcome: %v", n)
	if n["fallback_up"] < 10 || n["upstream_error"] < 6 || n["served"] < 11 {
		t.Errorf("outcomes %v: want ≥10 fallback_up, ≥6 upstream_error, ≥11 served", n)
	}
}

// Every endpoint answers 503 with Retry-After: the gateway tries each tier
// once, then tells the client when to come back instead of passing a raw
// backend error on.
func TestBackendsOverloadedRetryAfter(t *testing.T) {
	t.Parallel()
	busy := sim.Config{ErrorRate: 1, ErrorStatus: 503, RetryAfter: 2 * time.Second}
	sc, lc := busy, busy
	sc.Model, lc.Model = "small-model", "large-model"
	small, large := startSim(t, sc), startSim(t, lc)
	h := startHarness(t, twoTiers(t, []string{small.url()}, []string{large.url()}), sharedRedis)
	for i := range 3 {
		r := h.chat(context.Background(), "small", "hi")
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.status != http.StatusServiceUnavailable || r.code != "backend_unavailable" {
			t.Fatalf("request %d: %d %q %q, want 503 backend_unavailable", i, r.status, r.code, r.message)
		}
		if ra := r.header.Get("Retry-After"); ra != "1" && ra != "2" {
			t.Errorf("request %d: Retry-After %q, want the backends' cool-down (2s, or 1s left of it)", i, ra)
		}
		checkNoAddress(t, r.message)
		h.expect(r.id, want{outcome: "upstream_error"})
	}
	// Both endpoints cool down after their first 503: later requests do
	// not reach them.
	if s, l := small.sim.Stats().Requests, large.sim.Stats().Requests; s != 1 || l != 1 {
		t.Errorf("backends saw %d and %d requests, want 1 each (cooling down afterwards)", s, l)
	}
	h.records()
}

// Every backend hangs (no headers, ever): each attempt waits at most
// timeouts.first_byte and the whole chain, fallback included, at most
// timeouts.attempts_total; the client gets a 504 and the record says
// timeout.
func TestHungBackend(t *testing.T) {
	t.Parallel()
	hang := func(model string) *simBackend { return startSim(t, sim.Config{Model: model, HangRate: 1}) }
	a, b, l := hang("small-model"), hang("small-model"), hang("large-model")
	cfg := twoTiers(t, []string{a.url(), b.url()}, []string{l.url()})
	cfg.Timeouts.FirstByte = 200 * time.Millisecond
	cfg.Timeouts.AttemptsTotal = 500 * time.Millisecond
	cfg.Breaker.ConsecutiveFailures = 100 // keep every endpoint in play
	h := startHarness(t, cfg, sharedRedis)

	const n = 6
	replies := make(chan reply, n)
	for i := range n {
		go func() {
			model := "small"
			if i%3 == 2 {
				model = "large" // degrades to small, which hangs too
			}
			replies <- h.chat(context.Background(), model, "hi")
		}()
	}
	var slowest time.Duration
	for range n {
		r := <-replies
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.status != http.StatusGatewayTimeout || r.code != "upstream_timeout" {
			t.Errorf("request %s: %d %q %q, want 504 upstream_timeout", r.id, r.status, r.code, r.message)
		}
		checkNoAddress(t, r.message)
		slowest = max(slowest, r.elapsed)
		if r.elapsed > cfg.Timeouts.AttemptsTotal+700*time.Millisecond {
			t.Errorf("request %s took %v, attempts_total is %v", r.id, r.elapsed, cfg.Timeouts.AttemptsTotal)
		}
		if r.elapsed < cfg.Timeouts.AttemptsTotal-50*time.Millisecond {
			t.Errorf("request %s gave up after %v, before attempts_total %v", r.id, r.elapsed, cfg.Timeouts.AttemptsTotal)
		}
		h.expect(r.id, want{outcome: "timeout"})
	}
	t.Logf("%d requests to hung backends: slowest 504 after %v (first_byte %v, attempts_total %v)",
		n, slowest, cfg.Timeouts.FirstByte, cfg.Timeouts.AttemptsTotal)
	h.records()
}
