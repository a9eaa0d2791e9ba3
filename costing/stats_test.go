package costing

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/config"
)

func TestQuantile(t *testing.T) {
	h := make([]int64, nBuckets)
	h[0], h[4] = 50, 50 // (0,5] and (50,100]
	for _, c := range []struct{ q, want float64 }{{0.5, 5}, {0.25, 2.5}, {0.95, 95}, {0.99, 99}} {
		if got := quantile(h, c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("q%.2f = %g, want %g", c.q, got, c.want)
		}
	}
	over := make([]int64, nBuckets)
	over[nBuckets-1] = 3
	if got := quantile(over, 0.5); got != 120000 {
		t.Errorf("open bucket: %g, want its lower bound 120000", got)
	}
	if got := quantile(make([]int64, nBuckets), 0.5); got != 0 {
		t.Errorf("empty: %g", got)
	}
}

func TestFormatWindow(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Hour: "1h", 90 * time.Minute: "1h30m", 5 * time.Minute: "5m",
		720 * time.Hour: "720h", 90 * time.Second: "1m30s"} {
		if got := formatWindow(d); got != want {
			t.Errorf("%v: %q, want %q", d, got, want)
		}
	}
}

func TestQueryAgreesWithRecords(t *testing.T) {
	rdb, prefix := testRedis(t)
	r := NewRedisRecorder(recorderClient(t, redisAddr), prefix, config.Recorder{BatchSize: 16, FlushInterval: 10 * time.Millisecond})
	now := time.Now().UTC()
	type sums struct{ req, esc, errs, in, out, cost, base, energy int64 }
	var total sums
	per := map[string]*sums{"small": {}, "large": {}}
	minutes := map[string]int64{}
	const n = 90
	for i := 0; i < n; i++ {
		tier := "small"
		if i%3 == 0 {
			tier = "large"
		}
		rec := Record{Time: now.Add(-time.Duration(i) * 7 * time.Second), Tier: tier, Model: tier + "-m", KeyID: "k" + tier[:1],
			Escalated: tier == "large", InputTokens: 50 + i, OutputTokens: 20 + i, CostMicroUSD: int64(5 + i),
			BaselineMicroUSD: int64(40 + 2*i), EnergyMilliWh: int64(1 + i%4),
			TTFT: 40 * time.Millisecond, Latency: 300 * time.Millisecond}
		if i == 10 {
			rec.Outcome = OutcomeTimeout
		}
		r.Record(rec)
		for _, s := range []*sums{&total, per[tier]} {
			s.req++
			if rec.Escalated {
				s.esc++
			}
			if !rec.Outcome.OK() {
				s.errs++
			}
			s.in += int64(rec.InputTokens)
			s.out += int64(rec.OutputTokens)
			s.cost += rec.CostMicroUSD
			s.base += rec.BaselineMicroUSD
			s.energy += rec.EnergyMilliWh
		}
		minutes[rec.Time.Truncate(time.Minute).Format(time.RFC3339)]++
	}
	closeRecorder(t, r)
	ctx := context.Background()

	check := func(name string, g Group, s sums) {
		t.Helper()
		if g.Requests != s.req || g.Escalations != s.esc || g.Errors != s.errs || g.InputTokens != s.in || g.OutputTokens != s.out {
			t.Errorf("%s counts %+v, want %+v", name, g, s)
		}
		if !near(g.CostUSD, float64(s.cost)/1e6) || !near(g.BaselineCostUSD, float64(s.base)/1e6) ||
			!near(g.SavingsUSD, float64(s.base-s.cost)/1e6) || !near(g.EnergyWh, float64(s.energy)/1e3) {
			t.Errorf("%s money %+v, want cost %d base %d energy %d", name, g, s.cost, s.base, s.energy)
		}
		if !near(g.EscalationRate, float64(s.esc)/float64(s.req)) || !near(g.SavingsRate, float64(s.base-s.cost)/float64(s.base)) ||
			!near(g.TokensPerWh, float64(s.out)/(float64(s.energy)/1e3)) {
			t.Errorf("%s rates %+v", name, g)
		}
		// All latencies 300 ms: bucket (250, 500]; TTFT 40 ms: (25, 50].
		if (g.LatencyMs != Percentiles{P50: 375, P95: 487.5, P99: 497.5}) || (g.TTFTMs != Percentiles{P50: 37.5, P95: 48.75, P99: 49.75}) {
			t.Errorf("%s percentiles %+v %+v", name, g.LatencyMs, g.TTFTMs)
		}
	}

	rep, err := Query(ctx, rdb, prefix, time.Hour, "tier", now)
	if err != nil {
		t.Fatal(err)
	}
	check("total", rep.Total, total)
	if len(rep.Groups) != 2 {
		t.Fatalf("groups %v", rep.Groups)
	}
	for tier, s := range per {
		check(tier, rep.Groups[tier], *s)
	}
	if len(rep.Series) != len(minutes) {
		t.Fatalf("%d series points, want %d minutes", len(rep.Series), len(minutes))
	}
	for i, p := range rep.Series {
		if p.Requests != minutes[p.T] || (i > 0 && p.T <= rep.Series[i-1].T) {
			t.Errorf("series point %d %+v, want %d requests, oldest first", i, p, minutes[p.T])
		}
	}
	if rep.Window != "1h" || rep.By != "tier" || rep.To != now.Format(time.RFC3339) ||
		rep.From != now.Add(-time.Hour).Truncate(time.Minute).Format(time.RFC3339) {
		t.Errorf("header %q %q %q %q", rep.Window, rep.By, rep.From, rep.To)
	}

	// Longer windows read hourly rollups: same totals, hourly points.
	day, err := Query(ctx, rdb, prefix, 24*time.Hour, "key", now)
	if err != nil {
		t.Fatal(err)
	}
	check("day total", day.Total, total)
	if day.Groups["kl"].Requests != per["large"].req || day.Groups["ks"].Requests != per["small"].req {
		t.Errorf("by key: %+v", day.Groups)
	}
	var hourly int64
	for _, p := range day.Series {
		if !strings.HasSuffix(p.T, ":00:00Z") {
			t.Errorf("day series point %s is not an hour", p.T)
		}
		hourly += p.Requests
	}
	if hourly != n {
		t.Errorf("hourly series sums to %d", hourly)
	}

	// A window before the records holds nothing.
	empty, err := Query(ctx, rdb, prefix, 5*time.Minute, "model", now.Add(-2*time.Hour))
	if err != nil || empty.Total.Requests != 0 || len(empty.Groups) != 0 || len(empty.Series) != 0 {
		t.Errorf("empty window: %+v %v", empty, err)
	}

	b, _ := json.Marshal(rep)
	var generic map[string]any
	json.Unmarshal(b, &generic)
	for _, k := range []string{"window", "from", "to", "by", "total", "groups", "series"} {
		if _, ok := generic[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	g := generic["total"].(map[string]any)
	for _, k := range []string{"requests", "escalations", "escalation_rate", "errors", "input_tokens", "output_tokens",
		"cost_usd", "baseline_cost_usd", "savings_usd", "savings_rate", "energy_wh", "tokens_per_wh", "latency_ms", "ttft_ms"} {
		if _, ok := g[k]; !ok {
			t.Errorf("group JSON lacks %q", k)
		}
	}
}

func TestQueryRejectsBadInput(t *testing.T) {
	rdb, prefix := testRedis(t)
	for _, c := range []struct {
		w  time.Duration
		by string
	}{{0, "tier"}, {-time.Hour, "tier"}, {31 * 24 * time.Hour, "tier"}, {time.Hour, "endpoint"}} {
		if _, err := Query(context.Background(), rdb, prefix, c.w, c.by, time.Now()); !errors.Is(err, ErrBadQuery) {
			t.Errorf("window %v by %q: %v, want ErrBadQuery", c.w, c.by, err)
		}
	}
}
