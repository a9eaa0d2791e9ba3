package faults_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// Redis is killed (SIGKILL) for 5 s under a steady 50 requests/s and
// restarted on the same port: every request is served meanwhile, and once
// Redis is back every record is written exactly once (written = sent, ids
// unique, the hourly rollup counts each).
func TestRedisKilledUnderLoad(t *testing.T) {
	t.Parallel()
	const (
		rate          = 50 // requests per second
		before, after = time.Second, 2 * time.Second
		outage        = 5 * time.Second
	)
	srv := startRedisServer(t)
	small := startSim(t, sim.Config{Model: "small-model"})
	large := startSim(t, sim.Config{Model: "large-model"})
	h := startHarness(t, twoTiers(t, []string{small.url()}, []string{large.url()}), srv.addr)

	var wg sync.WaitGroup
	var mu sync.Mutex // guards failed
	var failed []reply
	start := time.Now()
	tick := time.NewTicker(time.Second / rate)
	killed, restarted := false, false
	sent := 0
	for now := range tick.C {
		el := now.Sub(start)
		if el >= before+outage+after {
			break
		}
		switch {
		case !killed && el >= before:
			srv.kill()
			killed = true
		case !restarted && el >= before+outage:
			t.Logf("at restart: recorder %+v", h.rec.Stats())
			srv.start()
			restarted = true
		}
		sent++
		wg.Go(func() {
			r := h.chat(context.Background(), "small", "What is 2+2?")
			if r.err != nil || r.status != 200 {
				mu.Lock()
				failed = append(failed, r)
				mu.Unlock()
				return
			}
			h.expect(r.id, servedWant(r))
		})
	}
	tick.Stop()
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d of %d requests failed while Redis was down; first: %+v", len(failed), sent, failed[0])
	}
	recs := h.records()
	st := h.rec.Stats()
	t.Logf("Redis down %v at %d req/s: %d sent, %d served, %d records, recorder %+v", outage, rate, sent, sent-len(failed), len(recs), st)
	if st.Errors == 0 {
		t.Error("the recorder saw no failed flush: was Redis down at all?")
	}
}
