package gateway

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// simServer runs a simulator on a loopback port and returns it with its /v1 URL.
func simServer(t testing.TB, c sim.Config) (*sim.Server, string) {
	t.Helper()
	s := sim.New(c)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts.URL + "/v1"
}

func sdkClient(base string) openai.Client {
	return openai.NewClient(option.WithBaseURL(base+"/v1"), option.WithAPIKey("test"), option.WithMaxRetries(0))
}

func chatParams(model, prompt string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
	}
}

func TestEndToEndSDK(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model"})
	large, largeURL := simServer(t, sim.Config{Model: "large-model"})
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{largeURL}), Options{})
	client := sdkClient(base)
	ctx := context.Background()
	long := strings.Repeat("Prove that the sequence converges and derive its limit step by step. ", 80)

	cases := []struct {
		name, model, prompt, tier, escalated string
	}{
		{"auto short stays small", "auto", "What is 2+2?", "small", "false"},
		{"auto long escalates", "auto", long, "large", "score"},
		{"pinned tier", "large", "hi", "large", "false"},
		{"pinned upstream model", "small-model", long, "small", "false"},
	}
	for _, tc := range cases {
		t.Run(tc.name+"/non-streaming", func(t *testing.T) {
			var hr *http.Response
			res, err := client.Chat.Completions.New(ctx, chatParams(tc.model, tc.prompt), option.WithResponseInto(&hr))
			if err != nil {
				t.Fatal(err)
			}
			if got := hr.Header.Get("X-Cascade-Tier"); got != tc.tier {
				t.Fatalf("tier %q, want %q", got, tc.tier)
			}
			if got := hr.Header.Get("X-Cascade-Escalated"); got != tc.escalated {
				t.Fatalf("escalated %q, want %q", got, tc.escalated)
			}
			if hr.Header.Get("X-Request-Id") == "" || hr.Header.Get("X-Cascade-Model") != tc.tier+"-model" || hr.Header.Get("X-Cascade-Score") == "" {
				t.Fatalf("headers incomplete: %v", hr.Header)
			}
			if len(res.Choices) == 0 || res.Choices[0].Message.Content == "" {
				t.Fatalf("empty answer: %+v", res)
			}
			if res.Usage.PromptTokens == 0 || res.Usage.CompletionTokens == 0 || res.Usage.TotalTokens != res.Usage.PromptTokens+res.Usage.CompletionTokens {
				t.Fatalf("usage: %+v", res.Usage)
			}
		})
		t.Run(tc.name+"/streaming", func(t *testing.T) {
			var hr *http.Response
			p := chatParams(tc.model, tc.prompt)
			p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			stream := client.Chat.Completions.NewStreaming(ctx, p, option.WithResponseInto(&hr))
			var acc openai.ChatCompletionAccumulator
			chunks := 0
			for stream.Next() {
				acc.AddChunk(stream.Current())
				chunks++
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			if got := hr.Header.Get("X-Cascade-Tier"); got != tc.tier {
				t.Fatalf("tier %q, want %q", got, tc.tier)
			}
			if chunks < 3 || acc.Choices[0].Message.Content == "" {
				t.Fatalf("stream too short: %d chunks, %+v", chunks, acc.ChatCompletion)
			}
			if acc.Usage.CompletionTokens == 0 || acc.Usage.PromptTokens == 0 {
				t.Fatalf("stream usage missing: %+v", acc.Usage)
			}
		})
	}
	if small.Stats().Requests == 0 || large.Stats().Requests == 0 {
		t.Fatalf("both tiers should have served: small %+v large %+v", small.Stats(), large.Stats())
	}
}

func TestStreamWithoutUsageRequestHidesUsageChunk(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	body := `{"model":"small","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sawDone := false
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, `"usage"`) && strings.Contains(line, `"choices":[]`) {
			t.Fatalf("usage-only chunk forwarded to a client that did not ask: %s", line)
		}
		if line == "data: [DONE]" {
			sawDone = true
		}
	}
	if !sawDone {
		t.Fatal("no [DONE]")
	}
}

func TestCompletionsEndpoint(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	client := sdkClient(base)
	res, err := client.Completions.New(context.Background(), openai.CompletionNewParams{
		Model:  "auto",
		Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Say hi")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Choices) == 0 || res.Choices[0].Text == "" || res.Usage.CompletionTokens == 0 {
		t.Fatalf("completion: %+v", res)
	}
}

func TestBreakerMovesTrafficToSibling(t *testing.T) {
	bad, badURL := simServer(t, sim.Config{Model: "small-model"})
	good, goodURL := simServer(t, sim.Config{Model: "small-model"})
	_, largeURL := simServer(t, sim.Config{Model: "large-model"})
	bad.SetFaults(1, 503, 0, 0)
	cfg := testConfig(t, []string{badURL, goodURL}, []string{largeURL})
	cfg.Breaker.OpenFor = time.Hour
	g, base := startGateway(t, cfg, Options{})
	client := sdkClient(base)
	for i := 0; i < 40; i++ {
		var hr *http.Response
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi"), option.WithResponseInto(&hr)); err != nil {
			t.Fatalf("request %d failed: %v", i, err)
		}
		if hr.Header.Get("X-Cascade-Tier") != "small" {
			t.Fatalf("request %d left the tier: %v", i, hr.Header)
		}
	}
	var badEp interface{ Available() bool }
	for _, e := range g.snap.Load().pools["small"].Endpoints {
		if e.URL == badURL {
			badEp = e
		}
	}
	if badEp.Available() {
		t.Fatal("breaker of the failing endpoint did not open")
	}
	before := bad.Stats().Requests
	for i := 0; i < 10; i++ {
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi")); err != nil {
			t.Fatal(err)
		}
	}
	if bad.Stats().Requests != before {
		t.Fatalf("open breaker still let requests through: %d -> %d", before, bad.Stats().Requests)
	}
	if good.Stats().Completed < 40 {
		t.Fatalf("sibling served %d, want >= 40", good.Stats().Completed)
	}
}

func TestBreakerHalfOpenRecovery(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model"})
	_, largeURL := simServer(t, sim.Config{Model: "large-model"})
	small.SetFaults(1, 503, 0, 0)
	cfg := testConfig(t, []string{smallURL}, []string{largeURL})
	cfg.Retries = 0
	cfg.Breaker.OpenFor = 300 * time.Millisecond
	_, base := startGateway(t, cfg, Options{})
	client := sdkClient(base)
	// Failures fall back to large; after 3 the breaker is open.
	for i := 0; i < 5; i++ {
		var hr *http.Response
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi"), option.WithResponseInto(&hr)); err != nil {
			t.Fatal(err)
		}
		if hr.Header.Get("X-Cascade-Tier") != "large" || hr.Header.Get("X-Cascade-Fallback") != "up" || hr.Header.Get("X-Cascade-Escalated") != "false" {
			t.Fatalf("want fallback to large, got %v", hr.Header)
		}
	}
	small.SetFaults(0, 0, 0, 0)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var hr *http.Response
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi"), option.WithResponseInto(&hr)); err != nil {
			t.Fatal(err)
		}
		if hr.Header.Get("X-Cascade-Tier") == "small" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("breaker never closed after the endpoint recovered")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWholeTierDownFallsBack(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	cfg := testConfig(t, []string{smallURL}, []string{"http://127.0.0.1:1/v1"}) // nothing listens on port 1
	_, base := startGateway(t, cfg, Options{})
	var hr *http.Response
	client := sdkClient(base)
	_, err := client.Chat.Completions.New(context.Background(), chatParams("large", "hi"), option.WithResponseInto(&hr))
	if err != nil {
		t.Fatal(err)
	}
	// A fallback is not the router's escalation: the request was pinned to large.
	if hr.Header.Get("X-Cascade-Tier") != "small" || hr.Header.Get("X-Cascade-Degraded") != "fallback" ||
		hr.Header.Get("X-Cascade-Fallback") != "down" || hr.Header.Get("X-Cascade-Escalated") != "false" {
		t.Fatalf("want degraded fallback to small, got %v", hr.Header)
	}
}

func TestAllDownIs503(t *testing.T) {
	cfg := testConfig(t, []string{"http://127.0.0.1:1/v1"}, []string{"http://127.0.0.1:1/v1"})
	_, base := startGateway(t, cfg, Options{})
	client := sdkClient(base)
	_, err := client.Chat.Completions.New(context.Background(), chatParams("auto", "hi"))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 503 || !strings.Contains(apiErr.Message, "no model backend is available") {
		t.Fatalf("want 503 OpenAI error, got %v", err)
	}
}

func TestUpstream4xxPassedThrough(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model"})
	small.SetFaults(1, 422, 0, 0)
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	client := sdkClient(base)
	_, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi"))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 422 {
		t.Fatalf("want 422 passed through, got %v", err)
	}
}

func TestClientCancelStopsUpstream(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model", ITL: 20 * time.Millisecond, MinTokens: 500, MaxTokens: 500})
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	client := sdkClient(base)
	stream := client.Chat.Completions.NewStreaming(ctx, chatParams("small", "tell me a long story"))
	for i := 0; i < 3 && stream.Next(); i++ {
	}
	cancel()
	stream.Close()
	deadline := time.Now().Add(5 * time.Second)
	for small.Stats().Cancelled == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("simulator never saw the cancellation: %+v", small.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := small.Stats(); st.Completed != 0 {
		t.Fatalf("generation completed despite the client leaving: %+v", st)
	}
}

func TestUpstreamBreaksMidStream(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model", MinTokens: 50, MaxTokens: 50})
	small.SetFaults(0, 0, 0, 5)
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	client := sdkClient(base)
	stream := client.Chat.Completions.NewStreaming(context.Background(), chatParams("small", "hi"))
	n := 0
	for stream.Next() {
		n++
	}
	if stream.Err() == nil {
		t.Fatalf("a stream cut after %d chunks ended without an error", n)
	}
	if !strings.Contains(stream.Err().Error(), "broke off") {
		t.Fatalf("error does not say what happened: %v", stream.Err())
	}
}
