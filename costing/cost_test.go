package costing

import (
	"math"
	"sync"
	"testing"

	"github.com/cascade-gateway/cascade/config"
)

// The shipped example profiles.
var (
	h100x1 = &config.GPUProfile{GPUs: 1, USDPerGPUHour: 2.5, WattsPerGPU: 500,
		PrefillTokensPerSec: 50000, DecodeTokensPerSec: 5000}
	h100x4 = &config.GPUProfile{GPUs: 4, USDPerGPUHour: 2.5, WattsPerGPU: 500, PUE: 1.2,
		PrefillTokensPerSec: 25000, DecodeTokensPerSec: 2500}
)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b)) }

func TestRatesForGPUProfile(t *testing.T) {
	r := RatesFor(config.Cost{GPU: h100x1})
	// 2.50 USD/h / 3600 s = 6.944e-4 USD/s; / 5000 tok/s.
	want := Rates{
		OutputUSD: 2.5 / 3600 / 5000, // 0.139 USD per million
		InputUSD:  2.5 / 3600 / 50000,
		OutputWh:  500 * 1.2 / 5000 / 3600, // 0.12 J
		InputWh:   500 * 1.2 / 50000 / 3600,
	}
	if !near(r.OutputUSD, want.OutputUSD) || !near(r.InputUSD, want.InputUSD) ||
		!near(r.OutputWh, want.OutputWh) || !near(r.InputWh, want.InputWh) {
		t.Fatalf("rates %+v, want %+v", r, want)
	}
	if j := r.OutputWh * 3600; !near(j, 0.12) {
		t.Errorf("J per output token = %g, want 0.12", j)
	}
	if m := r.OutputUSD * 1e6; math.Abs(m-0.1389) > 1e-4 {
		t.Errorf("USD per million output tokens = %g, want 0.1389", m)
	}
	big := RatesFor(config.Cost{GPU: h100x4})
	if j := big.OutputWh * 3600; !near(j, 0.96) { // 4 × 500 W × 1.2 / 2500 tok/s
		t.Errorf("70B J per output token = %g, want 0.96", j)
	}
	if m := big.OutputUSD * 1e6; math.Abs(m-1.1111) > 1e-4 { // 10 USD/h / 3600 / 2500
		t.Errorf("70B USD per million output tokens = %g, want 1.1111", m)
	}
}

func TestRatesForExplicitAndFree(t *testing.T) {
	r := RatesFor(config.Cost{InputUSDPerMTok: 0.15, OutputUSDPerMTok: 0.6})
	if !near(r.InputUSD, 0.15e-6) || !near(r.OutputUSD, 0.6e-6) || r.InputWh != 0 || r.OutputWh != 0 {
		t.Fatalf("explicit rates %+v", r)
	}
	if r := RatesFor(config.Cost{}); r != (Rates{}) {
		t.Fatalf("no cost block: %+v, want zero", r)
	}
}

func twoTiers() []config.Tier {
	return []config.Tier{{Name: "small", Cost: config.Cost{GPU: h100x1}}, {Name: "large", Cost: config.Cost{GPU: h100x4}}}
}

func TestPriceRecord(t *testing.T) {
	p := NewPricer(twoTiers())
	rec := Record{Tier: "small", InputTokens: 1000, OutputTokens: 500}
	p.Price(&rec)
	// small: 1000 × 0.01389 µUSD + 500 × 0.1389 µUSD = 83.33 µUSD;
	// 1000 × 3.333 µWh + 500 × 33.33 µWh = 20 mWh.
	// large (baseline): 1000 × 0.1111 + 500 × 1.1111 = 666.67 µUSD.
	if rec.CostMicroUSD != 83 || rec.EnergyMilliWh != 20 || rec.BaselineMicroUSD != 666 {
		t.Fatalf("cost %d µUSD, energy %d mWh, baseline %d µUSD; want 83, 20, 666",
			rec.CostMicroUSD, rec.EnergyMilliWh, rec.BaselineMicroUSD)
	}
	// The carried fractions (0.333 µUSD, 0.667 µUSD) complete a unit on the
	// next identical request: 83.33 × 2 = 166.67 → 166 in all, 666.67 × 2 →
	// 1333 in all.
	rec2 := Record{Tier: "small", InputTokens: 1000, OutputTokens: 500}
	p.Price(&rec2)
	if rec.CostMicroUSD+rec2.CostMicroUSD != 166 || rec.BaselineMicroUSD+rec2.BaselineMicroUSD != 1333 {
		t.Fatalf("two requests: cost %d, baseline %d; want 166, 1333",
			rec.CostMicroUSD+rec2.CostMicroUSD, rec.BaselineMicroUSD+rec2.BaselineMicroUSD)
	}

	large := Record{Tier: "large", InputTokens: 1000, OutputTokens: 500}
	p.Price(&large)
	if large.CostMicroUSD != 666 || large.BaselineMicroUSD != large.CostMicroUSD {
		t.Fatalf("large: cost %d baseline %d, want 666 and equal", large.CostMicroUSD, large.BaselineMicroUSD)
	}
	// 4 × 500 W × 1.2 = 2400 W for 1000 / 25000 s + 500 / 2500 s = 0.24 s:
	// 576 J = 160 mWh.
	if large.EnergyMilliWh != 160 {
		t.Fatalf("large energy %d mWh, want 160", large.EnergyMilliWh)
	}

	unknown := Record{Tier: "gone", InputTokens: 1000, OutputTokens: 500, CostMicroUSD: 7}
	p.Price(&unknown)
	if unknown.CostMicroUSD != 0 || unknown.EnergyMilliWh != 0 || unknown.BaselineMicroUSD != 666 {
		t.Fatalf("unknown tier: %+v", unknown)
	}
	explicit := NewPricer([]config.Tier{{Name: "api", Cost: config.Cost{InputUSDPerMTok: 0.15, OutputUSDPerMTok: 0.6}}})
	r := Record{Tier: "api", InputTokens: 1000, OutputTokens: 500}
	explicit.Price(&r)
	if r.CostMicroUSD != 450 || r.BaselineMicroUSD != 450 || r.EnergyMilliWh != 0 {
		t.Fatalf("explicit prices: %+v, want 450 µUSD", r)
	}
	var nilPricer *Pricer
	nilPricer.Price(&r) // no pricer: leaves the record alone
}

// Requests worth less than one unit each must add up, not vanish.
func TestPriceSmallRequestsAddUp(t *testing.T) {
	p := NewPricer(twoTiers())
	const workers, each = 8, 125
	var cost, energy, base [workers]int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				rec := Record{Tier: "small", OutputTokens: 1}
				p.Price(&rec)
				if rec.CostMicroUSD > 1 || rec.EnergyMilliWh > 1 || rec.BaselineMicroUSD > 2 {
					t.Errorf("one token priced %+v", rec)
				}
				cost[w] += rec.CostMicroUSD
				energy[w] += rec.EnergyMilliWh
				base[w] += rec.BaselineMicroUSD
			}
		}()
	}
	wg.Wait()
	var c, e, b int64
	for w := range cost {
		c, e, b = c+cost[w], e+energy[w], b+base[w]
	}
	// 1000 tokens: 1000 × 0.13889 µUSD = 138.89 µUSD (139 nano-USD a token
	// after rounding to nano: 139 µUSD); 1000 × 33.33 µWh = 33 mWh;
	// baseline 1000 × 1.1111 µUSD = 1111 µUSD.
	if c != 139 || e != 33 || b != 1111 {
		t.Fatalf("1000 one-token requests: cost %d µUSD, energy %d mWh, baseline %d µUSD; want 139, 33, 1111", c, e, b)
	}
}

func BenchmarkPrice(b *testing.B) {
	b.ReportAllocs()
	p := NewPricer(twoTiers())
	rec := Record{Tier: "small", InputTokens: 812, OutputTokens: 230}
	for b.Loop() {
		p.Price(&rec)
	}
}
