package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/cascade-gateway/cascade/backends/sim"
)

func TestUpstreamFirstByteTimeoutIs504(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model"})
	small.SetFaults(0, 0, 1, 0) // every request hangs
	cfg := testConfig(t, []string{smallURL}, []string{smallURL})
	cfg.Timeouts.FirstByte = 150 * time.Millisecond
	cfg.Retries = 1
	_, base := startGateway(t, cfg, Options{})
	client := sdkClient(base)
	_, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi"))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusGatewayTimeout || !strings.Contains(apiErr.Message, "did not answer in time") {
		t.Fatalf("want 504 timeout error, got %v", err)
	}
	// The simulator saw the gateway give up on every attempt.
	deadline := time.Now().Add(5 * time.Second)
	for small.Stats().Cancelled == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("upstream requests were not cancelled: %+v", small.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStreamIdleTimeoutEndsWithErrorEvent(t *testing.T) {
	// 40 tokens 400ms apart: the 100ms idle limit trips after the first one.
	_, smallURL := simServer(t, sim.Config{Model: "small-model", ITL: 400 * time.Millisecond, MinTokens: 40, MaxTokens: 40})
	cfg := testConfig(t, []string{smallURL}, []string{smallURL})
	cfg.Timeouts.StreamIdle = 100 * time.Millisecond
	_, base := startGateway(t, cfg, Options{})
	client := sdkClient(base)
	stream := client.Chat.Completions.NewStreaming(context.Background(), chatParams("small", "hi"))
	for stream.Next() {
	}
	if stream.Err() == nil || !strings.Contains(stream.Err().Error(), "stream_idle") {
		t.Fatalf("want an idle-timeout error event, got %v", stream.Err())
	}
}

func TestReadyz(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	cfg := testConfig(t, []string{smallURL}, []string{"http://127.0.0.1:1/v1"})
	cfg.Retries = 0
	cfg.Breaker.OpenFor = time.Hour
	cfg.Fallback.LargeToSmall = false // keep failures on the large tier
	g, base := startGateway(t, cfg, Options{})
	get := func() int {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get(); got != 200 {
		t.Fatalf("readyz = %d before failures, want 200", got)
	}
	client := sdkClient(base)
	for i := 0; i < 3; i++ { // trips the large endpoint's breaker (3 failures in testConfig)
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("large", "hi")); err == nil {
			t.Fatal("request to a dead tier without fallback succeeded")
		}
	}
	if got := get(); got != 503 {
		t.Fatalf("readyz = %d with the large tier's only breaker open, want 503", got)
	}
	// With fallback to the small tier the gateway can serve every request: ready, degraded.
	cfg2 := *cfg
	cfg2.Fallback.LargeToSmall = true
	if err := g.Apply(&cfg2); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "degraded: no available endpoint in large") {
		t.Fatalf("readyz = %d %q with fallback to small, want 200 degraded", resp.StatusCode, body)
	}
}
