package faults_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// garbage is a backend that answers 200 with something that is not a
// completion, and counts the requests it got.
type garbage struct {
	name string
	url  func(t *testing.T) (string, func() int64)
}

func simGarbage(kind sim.InvalidBody) func(t *testing.T) (string, func() int64) {
	return func(t *testing.T) (string, func() int64) {
		b := startSim(t, sim.Config{Model: "small-model", Invalid: kind})
		return b.url(), func() int64 { return b.sim.Stats().Requests }
	}
}

// brokenOff answers 200 application/json announcing 400 bytes, sends the
// start of a completion and closes the connection.
func brokenOff(t *testing.T) (string, func() int64) {
	var n int64
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost { // the gateway scrapes GET /metrics
			http.NotFound(w, r)
			return
		}
		<-mu
		n++
		mu <- struct{}{}
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n")
		buf.WriteString(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assis`)
		buf.Flush()
		conn.(*net.TCPConn).CloseWrite()
	}))
	t.Cleanup(ts.Close)
	return ts.URL + "/v1", func() int64 { <-mu; defer func() { mu <- struct{}{} }(); return n }
}

var garbageKinds = []garbage{
	{"html", simGarbage(sim.InvalidHTML)},
	{"truncated json", simGarbage(sim.InvalidTruncated)},
	{"sse for a plain request", simGarbage(sim.InvalidSSE)},
	{"json without choices", simGarbage(sim.InvalidNoChoices)},
	{"body broken off", brokenOff},
}

// A backend answering 200 with garbage is not a success: the client gets a
// 502 upstream_invalid_response (never the garbage), the record says
// invalid_response, and after breaker.consecutive_failures of them the
// endpoint is taken out (then: 503 with no sibling, the sibling's answers
// with one).
func TestGarbageBodies(t *testing.T) {
	t.Parallel()
	for _, kind := range garbageKinds {
		t.Run(kind.name+"/alone", func(t *testing.T) {
			t.Parallel()
			bad, requests := kind.url(t)
			good := startSim(t, sim.Config{Model: "large-model"})
			cfg := twoTiers(t, []string{bad}, []string{good.url()})
			cfg.Fallback.SmallToLarge = false
			cfg.Breaker.OpenFor = time.Hour
			h := startHarness(t, cfg, sharedRedis)
			for i := range 5 {
				r := h.chat(context.Background(), "small", "hi")
				if r.err != nil {
					t.Fatal(r.err)
				}
				switch {
				case i < 3 && r.status == http.StatusBadGateway && r.code == "upstream_invalid_response":
					h.expect(r.id, want{outcome: "invalid_response", tier: "small"})
				case i >= 3 && r.status == http.StatusServiceUnavailable && r.code == "backend_unavailable":
					h.expect(r.id, want{outcome: "upstream_error", tier: "small"})
				default:
					t.Fatalf("request %d: %d %q %q; want 502 upstream_invalid_response, then 503 once the breaker opened after 3",
						i, r.status, r.code, r.message)
				}
				checkNoAddress(t, r.message)
			}
			if n := requests(); n != 3 {
				t.Errorf("the broken backend got %d requests, want 3 (then its breaker is open)", n)
			}
			h.records()
		})
		t.Run(kind.name+"/with sibling", func(t *testing.T) {
			t.Parallel()
			bad, requests := kind.url(t)
			good := startSim(t, sim.Config{Model: "small-model"})
			large := startSim(t, sim.Config{Model: "large-model"})
			cfg := twoTiers(t, []string{bad, good.url()}, []string{large.url()})
			cfg.Breaker.OpenFor = time.Hour
			h := startHarness(t, cfg, sharedRedis)
			failures := 0
			const n = 30
			for i := range n {
				r := h.chat(context.Background(), "small", "hi")
				switch {
				case r.err != nil:
					t.Fatal(r.err)
				case r.status == 200 && r.content != "" && r.header.Get("X-Cascade-Tier") == "small":
					h.expect(r.id, servedWant(r))
				case r.status == http.StatusBadGateway && r.code == "upstream_invalid_response":
					failures++
					h.expect(r.id, want{outcome: "invalid_response", tier: "small"})
				default:
					t.Fatalf("request %d: %d %q %q %q", i, r.status, r.code, r.message, r.content)
				}
			}
			if failures > 3 || requests() != int64(failures) {
				t.Errorf("%d garbage answers reached clients, the broken backend got %d requests: want at most 3, each one a 502", failures, requests())
			}
			t.Logf("%d of %d requests got a 502 before the breaker took the broken backend out", failures, n)
			h.records()
		})
	}
}
