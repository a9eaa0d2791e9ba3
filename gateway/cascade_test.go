package gateway

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
)

// cascadeSetup runs a cheap and a large simulator behind a gateway in
// cascade mode, recording into a tee.
func cascadeSetup(t *testing.T, smallCfg sim.Config, tune func(*config.Config)) (*sim.Server, *sim.Server, *tee, openai.Client) {
	t.Helper()
	smallCfg.Model = "small-model"
	small, smallURL := simServer(t, smallCfg)
	large, largeURL := simServer(t, sim.Config{Model: "large-model", MinTokens: 8, MaxTokens: 8})
	cfg := testConfig(t, []string{smallURL}, []string{largeURL})
	cfg.Routing.Mode = config.ModeCascade
	// Prices high enough that a dozen tokens cost whole micro-dollars.
	cfg.Tiers[0].Cost = config.Cost{InputUSDPerMTok: 100, OutputUSDPerMTok: 400}
	cfg.Tiers[1].Cost = config.Cost{InputUSDPerMTok: 1000, OutputUSDPerMTok: 4000}
	if tune != nil {
		tune(cfg)
	}
	rec := &tee{next: costing.Nop{}}
	_, base := startGateway(t, cfg, Options{Recorder: rec})
	return small, large, rec, sdkClient(base)
}

func TestCascadeConfidentAnswerPasses(t *testing.T) {
	_, large, rec, client := cascadeSetup(t, sim.Config{MinTokens: 12, MaxTokens: 12}, nil)
	var hr *http.Response
	resp, err := client.Chat.Completions.New(context.Background(), chatParams("auto", "[[easy]] Name a colour."),
		option.WithResponseInto(&hr))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Model != "small-model" || hr.Header.Get("X-Cascade-Escalated") != "false" {
		t.Fatalf("model %q, headers %v: want the cheap answer", resp.Model, hr.Header)
	}
	if c := hr.Header.Get("X-Cascade-Confidence"); c == "" || c < "0.5" {
		t.Fatalf("X-Cascade-Confidence %q, want a confident answer", c)
	}
	if len(resp.Choices) != 1 || len(resp.Choices[0].Logprobs.Content) != 0 || strings.Contains(resp.RawJSON(), `"logprobs":{`) {
		t.Fatalf("the client got logprobs it did not ask for: %s", resp.RawJSON())
	}
	if large.Stats().Requests != 0 {
		t.Fatal("the large model was called for a confident answer")
	}
	r := waitRecord(t, rec)
	if !r.Cascaded || r.Escalated || r.Tier != "small" || r.Discarded.Tier != "" || r.WastedMicroUSD != 0 || r.Outcome != costing.OutcomeServed {
		t.Fatalf("record %+v", r)
	}
	if r.OutputTokens != 12 {
		t.Fatalf("output tokens %d, want 12", r.OutputTokens)
	}
}

func TestCascadeDoubtedAnswerEscalates(t *testing.T) {
	_, large, rec, client := cascadeSetup(t, sim.Config{MinTokens: 12, MaxTokens: 12}, nil)
	var hr *http.Response
	resp, err := client.Chat.Completions.New(context.Background(), chatParams("auto", "[[hard]] Prove it."),
		option.WithResponseInto(&hr))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Model != "large-model" || hr.Header.Get("X-Cascade-Escalated") != "confidence" || hr.Header.Get("X-Cascade-Tier") != "large" {
		t.Fatalf("model %q, headers %v: want the large answer", resp.Model, hr.Header)
	}
	if large.Stats().Requests != 1 {
		t.Fatalf("large model requests %d", large.Stats().Requests)
	}
	r := waitRecord(t, rec)
	if !r.Cascaded || !r.Escalated || r.Reason != "confidence" || r.Tier != "large" || r.Outcome != costing.OutcomeServed {
		t.Fatalf("record %+v", r)
	}
	d := r.Discarded
	if d.Tier != "small" || d.Model != "small-model" || d.OutputTokens != 12 || d.InputTokens == 0 || d.Estimated {
		t.Fatalf("discarded attempt %+v", d)
	}
	if r.OutputTokens != 8 || r.WastedMicroUSD <= 0 || r.WastedMicroUSD != d.CostMicroUSD || r.CostMicroUSD <= d.CostMicroUSD {
		t.Fatalf("record costs %+v", r)
	}
}

// streamText reads a stream with the SDK and returns its text and the
// models its chunks named.
func streamText(t *testing.T, client openai.Client, p openai.ChatCompletionNewParams, opts ...option.RequestOption) (string, map[string]int, []openai.ChatCompletionChunk) {
	t.Helper()
	st := client.Chat.Completions.NewStreaming(context.Background(), p, opts...)
	var b strings.Builder
	models := map[string]int{}
	var chunks []openai.ChatCompletionChunk
	for st.Next() {
		c := st.Current()
		chunks = append(chunks, c)
		models[c.Model]++
		for _, ch := range c.Choices {
			b.WriteString(ch.Delta.Content)
		}
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String(), models, chunks
}

func TestCascadeStreamEscalationCancelsTheCheapStream(t *testing.T) {
	// A long cheap answer: the verdict comes on the held prefix, and the
	// cheap stream must be cancelled when it is doubted.
	small, _, rec, client := cascadeSetup(t, sim.Config{MinTokens: 400, MaxTokens: 400, ITL: 2 * time.Millisecond},
		func(c *config.Config) { c.Routing.Cascade.Hold.MaxTokens = 16 })
	text, models, _ := streamText(t, client, chatParams("auto", "[[hard]] Prove it."))
	if len(models) != 1 || models["large-model"] == 0 || text == "" {
		t.Fatalf("chunks from %v, want only the large model's", models)
	}
	waitCancelled(t, small, 1)
	r := waitRecord(t, rec)
	if !r.Escalated || r.Reason != "confidence" || r.Discarded.Tier != "small" || r.Discarded.OutputTokens < 16 ||
		r.Discarded.OutputTokens >= 400 || r.Outcome != costing.OutcomeServed || !r.Stream {
		t.Fatalf("record %+v", r)
	}
}

func TestCascadeStreamPassReleasesHeldAndLiveChunks(t *testing.T) {
	_, large, rec, client := cascadeSetup(t, sim.Config{MinTokens: 60, MaxTokens: 60, ITL: time.Millisecond},
		func(c *config.Config) { c.Routing.Cascade.Hold.MaxTokens = 16 })
	text, models, chunks := streamText(t, client, chatParams("auto", "[[easy]] Tell me a story."))
	if len(models) != 1 || models["small-model"] == 0 {
		t.Fatalf("chunks from %v", models)
	}
	for _, c := range chunks {
		for _, ch := range c.Choices {
			if len(ch.Logprobs.Content) != 0 {
				t.Fatalf("chunk with logprobs the client did not ask for: %s", c.RawJSON())
			}
		}
	}
	if large.Stats().Requests != 0 {
		t.Fatal("large model called")
	}
	r := waitRecord(t, rec)
	if !r.Cascaded || r.Escalated || r.OutputTokens != 60 || r.Hold <= 0 || r.TTFT < r.Hold {
		t.Fatalf("record %+v", r)
	}
	if n := len(strings.Fields(text)); n < 30 {
		t.Fatalf("text %q: the whole answer was not relayed", text)
	}
}

func TestCascadeKeepsClientLogprobs(t *testing.T) {
	_, _, _, client := cascadeSetup(t, sim.Config{MinTokens: 6, MaxTokens: 6}, nil)
	p := chatParams("auto", "[[easy]] Name a colour.")
	p.Logprobs = openai.Bool(true)
	p.TopLogprobs = openai.Int(2)
	resp, err := client.Chat.Completions.New(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	lp := resp.Choices[0].Logprobs.Content
	if len(lp) != 6 || len(lp[0].TopLogprobs) != 2 {
		t.Fatalf("logprobs %+v, want 6 tokens with 2 alternatives each", lp)
	}
	// The escalated answer carries the large model's logprobs.
	p = chatParams("auto", "[[hard]] Prove it.")
	p.Logprobs = openai.Bool(true)
	p.TopLogprobs = openai.Int(2)
	resp, err = client.Chat.Completions.New(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Model != "large-model" || len(resp.Choices[0].Logprobs.Content) != 8 {
		t.Fatalf("model %s, %d logprobs", resp.Model, len(resp.Choices[0].Logprobs.Content))
	}
}

func TestHybridBand(t *testing.T) {
	_, large, rec, client := cascadeSetup(t, sim.Config{MinTokens: 6, MaxTokens: 6}, func(c *config.Config) {
		c.Routing.Mode = config.ModeHybrid
		c.Routing.Cascade.Hybrid = config.Hybrid{Low: 0.2, High: 0.95}
	})
	// "hi" scores far below the band: served cheap without a check, even
	// though the simulator would answer it with doubt.
	var hr *http.Response
	if _, err := client.Chat.Completions.New(context.Background(), chatParams("auto", "[[hard]] hi"), option.WithResponseInto(&hr)); err != nil {
		t.Fatal(err)
	}
	r := waitRecord(t, rec)
	if r.Cascaded || r.Escalated || hr.Header.Get("X-Cascade-Confidence") != "" || large.Stats().Requests != 0 {
		t.Fatalf("below the band: record %+v, headers %v", r, hr.Header)
	}
}

// With a target escalation rate the verifier's threshold follows the
// verifier scores, so the share of confidence escalations holds the target
// whatever share of answers the cheap model is unsure of.
func TestCascadeHoldsTargetEscalationRate(t *testing.T) {
	const target = 0.25
	_, _, rec, client := cascadeSetup(t, sim.Config{MinTokens: 8, MaxTokens: 24, HardShare: 0.5}, func(c *config.Config) {
		c.Routing.Cascade.TargetEscalationRate = target
		c.Routing.Calibration.Window = 200
	})
	const warm, n = 300, 400
	for i := 0; i < warm+n; i++ {
		p := chatParams("auto", "Question "+strconv.Itoa(i)+": what follows?")
		if _, err := client.Chat.Completions.New(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.records()) < warm+n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	recs := rec.records()[warm:]
	esc := 0
	for _, r := range recs {
		if !r.Cascaded {
			t.Fatalf("record not cascaded: %+v", r)
		}
		if r.Escalated {
			esc++
		}
	}
	rate := float64(esc) / float64(len(recs))
	t.Logf("escalated %.3f of %d cascaded answers (target %.2f)", rate, len(recs), target)
	if math.Abs(rate-target) > 0.05 {
		t.Fatalf("escalated %.3f of %d after warm-up, want %.2f ± 0.05 (the simulator is unsure of half)", rate, len(recs), target)
	}
}

// /admin/backends tells which endpoints send logprobs when the cascade asks.
func TestCascadeReportsLogprobsPerEndpoint(t *testing.T) {
	t.Setenv("CASCADE_TEST_ADMIN_TOKEN", "tok")
	var base string
	_, _, _, client := cascadeSetup(t, sim.Config{MinTokens: 6, MaxTokens: 6}, func(c *config.Config) {
		c.Admin.TokenEnv = "CASCADE_TEST_ADMIN_TOKEN"
	})
	if _, err := client.Chat.Completions.New(context.Background(), chatParams("auto", "[[easy]] hi"),
		option.WithResponseInto(new(*http.Response)), option.WithMiddleware(func(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
			base = r.URL.Scheme + "://" + r.URL.Host
			return next(r)
		})); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", base+"/admin/backends", nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Endpoints []struct {
			Tier     string `json:"tier"`
			Logprobs string `json:"logprobs"`
		} `json:"endpoints"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range out.Endpoints {
		got[e.Tier] = e.Logprobs
	}
	if got["small"] != "yes" || got["large"] != "" {
		t.Fatalf("logprobs by tier %v, want small yes and large unknown", got)
	}
}

// An escalated cascade shows one client span per attempt under the server
// span, and the verifier's facts on the server span.
func TestCascadeTraceHasBothAttempts(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model", MinTokens: 6, MaxTokens: 6})
	_, largeURL := simServer(t, sim.Config{Model: "large-model", MinTokens: 6, MaxTokens: 6})
	var opts Options
	h := newOtelHarness(t, &opts)
	cfg := testConfig(t, []string{smallURL}, []string{largeURL})
	cfg.Routing.Mode = config.ModeCascade
	_, base := startGateway(t, cfg, opts)
	client := sdkClient(base)
	if _, err := client.Chat.Completions.New(context.Background(), chatParams("auto", "[[hard]] Prove it.")); err != nil {
		t.Fatal(err)
	}
	spans := h.waitSpans(t, 3)
	server := findSpan(t, spans, "POST /v1/chat/completions")
	for _, name := range []string{"chat small-model", "chat large-model"} {
		if s := findSpan(t, spans, name); s.Parent.SpanID() != server.SpanContext.SpanID() {
			t.Fatalf("%s is not a child of the server span", name)
		}
	}
	wantAttr(t, server, "cascade.reason", "confidence")
	wantAttr(t, server, "cascade.discarded_model", "small-model")
	if v, ok := attrOf(server, "cascade.verifier_score"); !ok || v.AsFloat64() < 0.5 {
		t.Fatalf("verifier score %v on the server span", v)
	}
}
