package costing

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// MaxWindow is the longest stats window.
const MaxWindow = 30 * 24 * time.Hour

// minuteWindows is the longest window read from (and plotted by) per-minute
// rollups; longer windows use the hourly ones.
const minuteWindows = 6 * time.Hour

// ErrBadQuery wraps errors about a stats query's window or dimension.
var ErrBadQuery = errors.New("bad stats query")

// Report is the answer to a stats query, the body of GET /admin/stats.
type Report struct {
	Window string `json:"window"`
	From   string `json:"from"`
	To     string `json:"to"`
	By     string `json:"by"`
	// Recorder and Routing are filled by the caller that knows them (the
	// running gateway); Query leaves them nil.
	Recorder *RecorderStats   `json:"recorder,omitempty"`
	Routing  *RoutingSummary  `json:"routing,omitempty"`
	Total    Group            `json:"total"`
	Groups   map[string]Group `json:"groups"`
	Series   []Point          `json:"series"`
}

// RoutingSummary is the routing state shown next to the stats.
type RoutingSummary struct {
	Threshold            float64  `json:"threshold"`
	TargetEscalationRate *float64 `json:"target_escalation_rate"` // null when the threshold is fixed
}

// Group sums the requests of one value of the dimension (or all of them).
type Group struct {
	Requests       int64   `json:"requests"`
	Escalations    int64   `json:"escalations"`
	EscalationRate float64 `json:"escalation_rate"`
	Errors         int64   `json:"errors"`
	ErrorRate      float64 `json:"error_rate"`
	// FallbacksUp and DegradedDown count requests served on another tier
	// than the router chose because it had no endpoint available; they are
	// not escalations.
	FallbacksUp  int64   `json:"fallbacks_up"`
	FallbackRate float64 `json:"fallback_rate"`
	DegradedDown int64   `json:"degraded_down"`
	DegradedRate float64 `json:"degraded_rate"`
	ClientErrors int64   `json:"client_errors"`
	Cancelled    int64   `json:"cancelled"`
	Rejected     int64   `json:"rejected"`
	// Cascaded counts answers the verifier judged; ConfidenceEscalations
	// those it escalated; WastedUSD what the thrown-away answers cost.
	Cascaded              int64       `json:"cascaded"`
	ConfidenceEscalations int64       `json:"escalations_confidence"`
	ConfidenceRate        float64     `json:"confidence_escalation_rate"`
	WastedUSD             float64     `json:"wasted_usd"`
	InputTokens           int64       `json:"input_tokens"`
	OutputTokens          int64       `json:"output_tokens"`
	CostUSD               float64     `json:"cost_usd"`
	BaselineCostUSD       float64     `json:"baseline_cost_usd"`
	SavingsUSD            float64     `json:"savings_usd"`
	SavingsRate           float64     `json:"savings_rate"`
	EnergyWh              float64     `json:"energy_wh"`
	TokensPerWh           float64     `json:"tokens_per_wh"` // output tokens per Wh
	LatencyMs             Percentiles `json:"latency_ms"`
	TTFTMs                Percentiles `json:"ttft_ms"`
}

// Percentiles of a histogram, in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// Point is one minute (windows up to 6h) or hour of the total.
type Point struct {
	T               string  `json:"t"`
	Requests        int64   `json:"requests"`
	Escalations     int64   `json:"escalations"`
	Errors          int64   `json:"errors"`
	FallbacksUp     int64   `json:"fallbacks_up"`
	DegradedDown    int64   `json:"degraded_down"`
	CostUSD         float64 `json:"cost_usd"`
	BaselineCostUSD float64 `json:"baseline_cost_usd"`
	EnergyWh        float64 `json:"energy_wh"`
	OutputTokens    int64   `json:"output_tokens"`
}

type counters [nFields]int64

// Query reads the rollups written by RedisRecorder under prefix for the
// window ending at now, grouped by "tier", "model" or "key" ("" means tier).
// Windows up to 6h are read minute by minute, longer ones hour by hour; the
// first minute or hour is included whole, so From is at or before
// now − window. Percentiles are interpolated linearly within the histogram
// bucket that holds them; one in the open last bucket is its lower bound.
func Query(ctx context.Context, rdb redis.UniversalClient, prefix string, window time.Duration, by string, now time.Time) (*Report, error) {
	if by == "" {
		by = "tier"
	}
	dim := -1
	for i, d := range Dims {
		if d == by {
			dim = i
		}
	}
	if dim < 0 {
		return nil, fmt.Errorf("%w: by must be tier, model or key, got %q", ErrBadQuery, by)
	}
	if window <= 0 || window > MaxWindow {
		return nil, fmt.Errorf("%w: window must be positive and at most 720h, got %v", ErrBadQuery, window)
	}
	now = now.UTC()
	unit, gran, layout := time.Minute, "m:", "200601021504"
	if window > minuteWindows {
		unit, gran, layout = time.Hour, "h:", "2006010215"
	}
	from := now.Add(-window).Truncate(unit)
	var slots []time.Time
	for t := from; !t.After(now); t = t.Add(unit) {
		slots = append(slots, t)
	}

	// Values of the dimension seen in the window, from the hourly index.
	pipe := rdb.Pipeline()
	var ix []*redis.StringSliceCmd
	for h := from.Truncate(time.Hour); !h.After(now); h = h.Add(time.Hour) {
		ix = append(ix, pipe.SMembers(ctx, prefix+"ix:"+by+":"+h.Format("2006010215")))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var values []string
	for _, c := range ix {
		for _, v := range c.Val() {
			if !seen[v] {
				seen[v] = true
				values = append(values, v)
			}
		}
	}
	sort.Strings(values)

	pipe = rdb.Pipeline()
	all := make([]*redis.MapStringStringCmd, len(slots))
	per := make([][]*redis.MapStringStringCmd, len(values))
	for i, t := range slots {
		all[i] = pipe.HGetAll(ctx, prefix+gran+"all:"+t.Format(layout))
	}
	for j, v := range values {
		per[j] = make([]*redis.MapStringStringCmd, len(slots))
		for i, t := range slots {
			per[j][i] = pipe.HGetAll(ctx, prefix+gran+by+":"+v+":"+t.Format(layout))
		}
	}
	if len(slots)+len(values)*len(slots) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
	}

	rep := &Report{Window: formatWindow(window), From: from.Format(time.RFC3339), To: now.Format(time.RFC3339),
		By: by, Groups: map[string]Group{}, Series: []Point{}}
	var total counters
	for i, c := range all {
		m := c.Val()
		if len(m) == 0 {
			continue
		}
		var k counters
		k.parse(m)
		total.addAll(&k)
		rep.Series = append(rep.Series, Point{T: slots[i].Format(time.RFC3339), Requests: k[fRequests],
			Escalations: k[fEscalations], Errors: k[fErrors], FallbacksUp: k[fFallbacks], DegradedDown: k[fDegraded],
			CostUSD:         usd(k[fCost]),
			BaselineCostUSD: usd(k[fBaseline]), EnergyWh: wh(k[fEnergy]), OutputTokens: k[fOutputTokens]})
	}
	rep.Total = total.group()
	for j, v := range values {
		var g counters
		for _, c := range per[j] {
			g.parse(c.Val())
		}
		if g[fRequests] > 0 {
			rep.Groups[v] = g.group()
		}
	}
	return rep, nil
}

// parse adds the fields of a rollup hash to c.
func (c *counters) parse(m map[string]string) {
	if len(m) == 0 {
		return
	}
	for i, f := range RollupFields {
		if s, ok := m[f]; ok {
			n, _ := strconv.ParseInt(s, 10, 64)
			c[i] += n
		}
	}
}

func (c *counters) addAll(o *counters) {
	for i := range c {
		c[i] += o[i]
	}
}

func usd(micro int64) float64 { return float64(micro) / 1e6 }
func wh(milli int64) float64  { return float64(milli) / 1e3 }

func (c *counters) group() Group {
	g := Group{
		Requests: c[fRequests], Escalations: c[fEscalations], Errors: c[fErrors],
		FallbacksUp: c[fFallbacks], DegradedDown: c[fDegraded], ClientErrors: c[fClientErrors],
		Cancelled: c[fCancelled], Rejected: c[fRejected],
		Cascaded: c[fCascaded], ConfidenceEscalations: c[fConfidence], WastedUSD: usd(c[fWasted]),
		InputTokens: c[fInputTokens], OutputTokens: c[fOutputTokens],
		CostUSD: usd(c[fCost]), BaselineCostUSD: usd(c[fBaseline]), EnergyWh: wh(c[fEnergy]),
		SavingsUSD: usd(c[fBaseline] - c[fCost]),
	}
	if g.Requests > 0 {
		n := float64(g.Requests)
		g.EscalationRate = float64(g.Escalations) / n
		g.ErrorRate = float64(g.Errors) / n
		g.FallbackRate = float64(g.FallbacksUp) / n
		g.DegradedRate = float64(g.DegradedDown) / n
	}
	if g.Cascaded > 0 {
		g.ConfidenceRate = float64(g.ConfidenceEscalations) / float64(g.Cascaded)
	}
	if c[fBaseline] > 0 {
		g.SavingsRate = float64(c[fBaseline]-c[fCost]) / float64(c[fBaseline])
	}
	if c[fEnergy] > 0 {
		g.TokensPerWh = float64(g.OutputTokens) / g.EnergyWh
	}
	g.LatencyMs = percentiles(c[fLat0 : fLat0+nBuckets])
	g.TTFTMs = percentiles(c[fTTFT0 : fTTFT0+nBuckets])
	return g
}

func percentiles(h []int64) Percentiles {
	return Percentiles{P50: quantile(h, 0.50), P95: quantile(h, 0.95), P99: quantile(h, 0.99)}
}

// quantile interpolates the q-quantile, in milliseconds, of the bucket
// counts h (bounds LatencyBucketsMs, then an open last bucket).
func quantile(h []int64, q float64) float64 {
	var n int64
	for _, c := range h {
		n += c
	}
	if n == 0 {
		return 0
	}
	rank := q * float64(n)
	var cum int64
	for i, c := range h {
		if c == 0 || float64(cum+c) < rank {
			cum += c
			continue
		}
		lo := 0.0
		if i > 0 {
			lo = float64(LatencyBucketsMs[i-1])
		}
		if i >= len(LatencyBucketsMs) {
			return lo
		}
		hi := float64(LatencyBucketsMs[i])
		return lo + (hi-lo)*(rank-float64(cum))/float64(c)
	}
	return float64(LatencyBucketsMs[len(LatencyBucketsMs)-1])
}

// formatWindow writes a duration the short way: 1h, 90m, 720h, 1h30m.
func formatWindow(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		s := d.String()
		return s[:len(s)-2] // drop "0s"
	}
	return d.String()
}
