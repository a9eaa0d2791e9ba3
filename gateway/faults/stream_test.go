package faults_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// postStream sends a streaming chat request as raw HTTP and returns the
// response with its whole body.
func (h *harness) postStream(ctx context.Context, model string) (id string, resp *http.Response, body []byte, err error) {
	id = h.newID()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/v1/chat/completions",
		strings.NewReader(`{"model":"`+model+`","stream":true,"messages":[{"role":"user","content":"Tell me a story"}]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", id)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return id, nil, nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return id, resp, body, err
}

// errorEvent returns the code of a `data: {"error":...}` event, or "".
func errorEvent(ev string) string {
	data, ok := strings.CutPrefix(ev, "data: ")
	if !ok || strings.Contains(data, "\n") {
		return ""
	}
	var e struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal([]byte(data), &e) != nil || e.Error == nil {
		return ""
	}
	return e.Error.Code
}

// An upstream stream cut in the middle of an event: the client's raw SSE
// has the partial event closed by a blank line, then the error as an event
// of its own, then the end (no [DONE]); openai-go reports an error rather
// than a clean end; the record says upstream_error.
func TestStreamCutMidEvent(t *testing.T) {
	t.Parallel()
	small := startSim(t, sim.Config{Model: "small-model", MinTokens: 30, MaxTokens: 30, CloseAfter: 5, CutMidEvent: true})
	large := startSim(t, sim.Config{Model: "large-model"})
	cfg := twoTiers(t, []string{small.url()}, []string{large.url()})
	cfg.Breaker.ConsecutiveFailures = 100
	h := startHarness(t, cfg, sharedRedis)
	ctx := context.Background()

	cutForwarded := 0
	for range 3 {
		id, resp, body, err := h.postStream(ctx, "small")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("X-Cascade-Tier") != "small" {
			t.Fatalf("status %d tier %q", resp.StatusCode, resp.Header.Get("X-Cascade-Tier"))
		}
		h.expect(id, want{outcome: "upstream_error", tier: "small"})
		if !bytes.HasSuffix(body, []byte("\n\n")) || bytes.Contains(body, []byte("[DONE]")) {
			t.Fatalf("stream does not end with a complete event, or claims [DONE]:\n%s", body)
		}
		events := strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n")
		if len(events) < 3 {
			t.Fatalf("%d events:\n%s", len(events), body)
		}
		last := events[len(events)-1]
		if code := errorEvent(last); code != "stream_interrupted" {
			t.Fatalf("last event %q is not an error event of its own with code stream_interrupted", last)
		}
		// The cut event is either dropped or closed by a blank line of
		// its own before the error; every event before it is whole.
		whole := events[:len(events)-1]
		if p := whole[len(whole)-1]; !json.Valid([]byte(strings.TrimPrefix(p, "data: "))) {
			if !strings.HasPrefix(p, "data: {") {
				t.Fatalf("the event before the error is neither whole nor the cut one: %q", p)
			}
			whole = whole[:len(whole)-1]
			cutForwarded++
		}
		checkNoAddress(t, last)
		for _, line := range strings.Split(string(body), "\n") {
			if strings.Count(line, "data:") > 1 {
				t.Fatalf("an error glued onto a partial line: %q", line)
			}
		}
		for _, ev := range whole {
			if !json.Valid([]byte(strings.TrimPrefix(ev, "data: "))) {
				t.Fatalf("an event before the cut is not JSON: %q", ev)
			}
		}
	}

	t.Logf("raw SSE: 3 streams cut mid-event, each ended by its own error event; %d forwarded the cut event, closed", cutForwarded)

	// openai-go: the stream ends with an error, not a clean end.
	c := h.client()
	for range 2 {
		id := h.newID()
		p := chatParams("small", "Tell me a story")
		stream := c.Chat.Completions.NewStreaming(ctx, p, optionID(id))
		chunks := 0
		for stream.Next() {
			chunks++
		}
		err := stream.Err()
		if err == nil || !strings.Contains(err.Error(), "broke off") {
			t.Fatalf("openai-go stream ended with %v after %d chunks, want the gateway's error", err, chunks)
		}
		stream.Close()
		h.expect(id, want{outcome: "upstream_error", tier: "small"})
		t.Logf("openai-go after %d chunks: %v", chunks, err)
	}
	h.records()
}

// A non-streaming answer whose body stalls after its headers is a 504 once
// timeouts.stream_idle passes, recorded as timeout, not a wait for
// timeouts.total.
func TestStalledBody(t *testing.T) {
	t.Parallel()
	small := startSim(t, sim.Config{Model: "small-model", Stall: 20 * time.Second, MinTokens: 200, MaxTokens: 200})
	large := startSim(t, sim.Config{Model: "large-model"})
	cfg := twoTiers(t, []string{small.url()}, []string{large.url()})
	cfg.Timeouts.StreamIdle = 200 * time.Millisecond
	h := startHarness(t, cfg, sharedRedis)
	for range 3 {
		r := h.chat(context.Background(), "small", "hi")
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.status != http.StatusGatewayTimeout || r.code != "upstream_timeout" {
			t.Fatalf("request %s: %d %q %q, want 504 upstream_timeout", r.id, r.status, r.code, r.message)
		}
		if r.elapsed > cfg.Timeouts.StreamIdle+800*time.Millisecond {
			t.Errorf("stalled body answered after %v, stream_idle is %v", r.elapsed, cfg.Timeouts.StreamIdle)
		}
		checkNoAddress(t, r.message)
		t.Logf("stalled body: 504 after %v", r.elapsed)
		h.expect(r.id, want{outcome: "timeout", tier: "small"})
	}
	h.records()
}
