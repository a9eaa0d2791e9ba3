package faults_test

import (
	"bufio"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// Shutdown with a 1 s grace while long streams are open (50 ms between
// tokens, 400 tokens): every stream ends with a shutting_down error event
// before the grace is over, and every one is recorded as shutdown.
func TestShutdownWithOpenStreams(t *testing.T) {
	t.Parallel()
	slow := sim.Config{ITL: 50 * time.Millisecond, MinTokens: 400, MaxTokens: 400}
	sc, lc := slow, slow
	sc.Model, lc.Model = "small-model", "large-model"
	small, large := startSim(t, sc), startSim(t, lc)
	h := startHarness(t, twoTiers(t, []string{small.url()}, []string{large.url()}), sharedRedis)

	const n = 8
	type seen struct {
		id     string
		chunks int
		last   string
		err    error
	}
	results := make(chan seen, n)
	var started sync.WaitGroup
	started.Add(n)
	for i := range n {
		go func() {
			id := h.newID()
			s := seen{id: id}
			defer func() { results <- s }()
			model := "small"
			if i%2 == 1 {
				model = "large"
			}
			req, _ := http.NewRequest(http.MethodPost, h.base+"/v1/chat/completions",
				strings.NewReader(`{"model":"`+model+`","stream":true,"messages":[{"role":"user","content":"Tell me a long story"}]}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Request-Id", id)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				s.err = err
				started.Done()
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(nil, 1<<20)
			once := sync.OnceFunc(started.Done)
			defer once()
			for sc.Scan() {
				line := sc.Text()
				if line == "" {
					continue
				}
				s.last = line
				if errorEvent(line) == "" {
					s.chunks++
					if s.chunks == 3 {
						once()
					}
				}
			}
			s.err = sc.Err()
		}()
	}
	started.Wait()
	begin := time.Now()
	err := h.stop(time.Second)
	took := time.Since(begin)
	t.Logf("Shutdown with a 1s grace and %d open streams returned after %v: %v", n, took, err)
	if took > 1500*time.Millisecond {
		t.Errorf("shutdown took %v with a 1s grace", took)
	}
	for range n {
		s := <-results
		if s.err != nil {
			t.Errorf("stream %s: %v", s.id, s.err)
		}
		if code := errorEvent(s.last); code != "shutting_down" {
			t.Errorf("stream %s ended after %d chunks with %q, want a shutting_down error event", s.id, s.chunks, s.last)
		}
		checkNoAddress(t, s.last)
		h.expect(s.id, want{outcome: "shutdown"})
	}
	recs := h.records()
	t.Logf("records by outcome: %v", countOutcomes(recs))
}
