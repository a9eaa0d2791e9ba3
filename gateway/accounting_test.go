package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
)

// tee keeps a copy of every record and passes it on.
type tee struct {
	mu   sync.Mutex
	recs []costing.Record
	next costing.Recorder
}

func (t *tee) Record(r costing.Record) {
	t.mu.Lock()
	t.recs = append(t.recs, r)
	t.mu.Unlock()
	t.next.Record(r)
}

func (t *tee) records() []costing.Record {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]costing.Record(nil), t.recs...)
}

// TestAccountingEndToEnd sends requests of every kind through the gateway
// into the real Redis recorder and checks that the stream, the rollups and
// the stats read-back agree with the records, one for one.
func TestAccountingEndToEnd(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	// Large answers are long (400 tokens, 5 ms apart) unless max_tokens caps
	// them, so a stream can be cancelled half-way.
	large, largeURL := simServer(t, sim.Config{Model: "large-model", MinTokens: 400, MaxTokens: 400, ITL: 5 * time.Millisecond})
	cfg := testConfig(t, []string{smallURL}, []string{largeURL})
	cfg.Tiers[0].Cost = config.Cost{GPU: &config.GPUProfile{GPUs: 1, USDPerGPUHour: 2.5, WattsPerGPU: 500,
		PrefillTokensPerSec: 50000, DecodeTokensPerSec: 5000}}
	cfg.Tiers[1].Cost = config.Cost{GPU: &config.GPUProfile{GPUs: 4, USDPerGPUHour: 2.5, WattsPerGPU: 500,
		PrefillTokensPerSec: 25000, DecodeTokensPerSec: 2500}}

	rdb, recClient, prefix := testRecorderRedis(t)
	cfg.Redis.Prefix = prefix
	redisRec := costing.NewRedisRecorder(recClient, prefix, config.Recorder{BatchSize: 8, FlushInterval: 20 * time.Millisecond})
	recorded := &tee{next: redisRec}
	_, base := startGateway(t, cfg, Options{Redis: rdb, Recorder: recorded})
	ctx := context.Background()
	alice, bob := sdkClient(base), openai.NewClient(option.WithBaseURL(base+"/v1"), option.WithAPIKey("sk-bob-0123"), option.WithMaxRetries(0))
	long := strings.Repeat("Prove that the sequence converges and derive its limit step by step. ", 80)

	sent := 0
	for i := 0; i < 6; i++ {
		client := alice
		if i%2 == 1 {
			client = bob
		}
		for _, model := range []string{"auto", "small", "large"} {
			prompt := fmt.Sprintf("What is %d+%d?", i, i)
			if i%3 == 0 {
				prompt = long
			}
			p := chatParams(model, prompt)
			p.MaxTokens = openai.Int(20)
			if _, err := client.Chat.Completions.New(ctx, p); err != nil {
				t.Fatal(err)
			}
			sent++
			p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(i%2 == 0)}
			st := client.Chat.Completions.NewStreaming(ctx, p)
			for st.Next() {
			}
			if err := st.Err(); err != nil {
				t.Fatal(err)
			}
			st.Close()
			sent++
		}
	}

	// A stream the client gives up on is recorded with what it consumed.
	cctx, cancel := context.WithCancel(ctx)
	st := alice.Chat.Completions.NewStreaming(cctx, chatParams("large", "tell me a long story"))
	for i := 0; i < 5 && st.Next(); i++ {
	}
	cancel()
	st.Close()
	sent++
	waitFor(t, 10*time.Second, "every request recorded", func() bool { return len(recorded.records()) == sent })
	waitFor(t, 10*time.Second, "the cancelled generation to stop", func() bool { return large.Stats().Cancelled == 1 })

	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	if err := redisRec.Close(cctx); err != nil {
		t.Fatal(err)
	}
	recs := recorded.records()
	if st := redisRec.Stats(); st.Written != int64(sent) || st.Dropped != 0 {
		t.Fatalf("recorder %+v, want %d written", st, sent)
	}

	// What the records say, summed.
	type sums struct{ req, esc, in, out, cost, base, energy int64 }
	var total sums
	perTier, perKey := map[string]*sums{}, map[string]int64{}
	days, hours := map[string]bool{}, map[string]bool{}
	var cancelled *costing.Record
	for i := range recs {
		r := &recs[i]
		for _, s := range []*sums{&total, perTier[r.Tier]} {
			if s == nil {
				s = &sums{}
				perTier[r.Tier] = s
			}
			s.req++
			if r.Escalated {
				s.esc++
			}
			s.in, s.out = s.in+int64(r.InputTokens), s.out+int64(r.OutputTokens)
			s.cost, s.base, s.energy = s.cost+r.CostMicroUSD, s.base+r.BaselineMicroUSD, s.energy+r.EnergyMilliWh
		}
		perKey[r.KeyID]++
		days[r.Time.UTC().Format("20060102")] = true
		hours[r.Time.UTC().Format("2006010215")] = true
		if r.Outcome == costing.OutcomeClientCancelled {
			cancelled = r
		}
		if r.Tier == "large" && r.OutputTokens > 0 && r.CostMicroUSD == 0 {
			t.Errorf("large-tier request with %d output tokens priced at 0: %+v", r.OutputTokens, r)
		}
	}
	if perTier["small"] == nil || perTier["large"] == nil {
		t.Fatalf("the mix should cover both tiers: %+v %+v", total, perTier)
	}
	if cancelled == nil {
		t.Fatal("no record of the cancelled stream")
	}
	if !cancelled.Estimated || cancelled.OutputTokens < 5 || cancelled.OutputTokens >= 400 || cancelled.CostMicroUSD <= 0 {
		t.Fatalf("cancelled stream: %+v; want partial output (5..399 tokens) estimated and costed", cancelled)
	}
	// API keys appear as their hash, never in clear.
	for key, want := range map[string]int64{"test": 19 /* i = 0, 2, 4 and the cancelled one */, "sk-bob-0123": 18} {
		sum := sha256.Sum256([]byte(key))
		id := hex.EncodeToString(sum[:8])
		if perKey[id] != want {
			t.Errorf("key %s: %d records with id %s, want %d (%v)", key, perKey[id], id, want, perKey)
		}
	}

	// Stream: one entry per request.
	var entries int64
	for d := range days {
		entries += rdb.XLen(ctx, prefix+"req:"+d).Val()
		xs := rdb.XRange(ctx, prefix+"req:"+d, "-", "+").Val()
		for _, x := range xs {
			if k := x.Values["key"]; k == "test" || k == "sk-bob-0123" {
				t.Fatalf("API key in clear in the stream: %v", x.Values)
			}
		}
	}
	if entries != int64(sent) {
		t.Fatalf("%d stream entries, want %d", entries, sent)
	}

	// Rollups: the hourly totals and the per-tier hours add up to the records.
	hgetSum := func(key string) map[string]int64 {
		out := map[string]int64{}
		for h := range hours {
			for f, v := range rdb.HGetAll(ctx, prefix+key+h).Val() {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[f] += n
			}
		}
		return out
	}
	all := hgetSum("h:all:")
	if all["requests"] != total.req || all["escalations"] != total.esc || all["input_tokens"] != total.in ||
		all["output_tokens"] != total.out || all["cost_uusd"] != total.cost || all["baseline_uusd"] != total.base ||
		all["energy_mwh"] != total.energy {
		t.Fatalf("hourly rollup %v, records sum to %+v", all, total)
	}
	for tier, s := range perTier {
		h := hgetSum("h:tier:" + tier + ":")
		if h["requests"] != s.req || h["cost_uusd"] != s.cost || h["baseline_uusd"] != s.base {
			t.Errorf("tier %s rollup %v, records %+v", tier, h, *s)
		}
	}

	// The stats read-back agrees.
	rep, err := costing.Query(ctx, rdb, prefix, time.Hour, "tier", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	g := rep.Total
	if g.Requests != total.req || g.Escalations != total.esc || g.OutputTokens != total.out ||
		g.CostUSD != float64(total.cost)/1e6 || g.BaselineCostUSD != float64(total.base)/1e6 || g.EnergyWh != float64(total.energy)/1e3 {
		t.Fatalf("stats total %+v, records %+v", g, total)
	}
	for tier, s := range perTier {
		if rep.Groups[tier].Requests != s.req || rep.Groups[tier].CostUSD != float64(s.cost)/1e6 {
			t.Errorf("stats %s %+v, records %+v", tier, rep.Groups[tier], *s)
		}
	}
	// The small tier saves against the large one.
	if sm := rep.Groups["small"]; sm.SavingsUSD <= 0 || sm.SavingsRate <= 0.5 {
		t.Errorf("small tier savings %+v", sm)
	}
}
