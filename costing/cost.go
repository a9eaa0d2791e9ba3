package costing

import (
	"sync/atomic"

	"github.com/cascade-gateway/cascade/config"
)

// DefaultPUE is the data-centre overhead assumed when a GPU profile gives
// none: every watt at the GPU costs 1.2 W at the meter.
const DefaultPUE = 1.2

// Rates are what one token costs on a tier, in US dollars and watt-hours.
type Rates struct {
	InputUSD  float64 // per input (prompt) token
	OutputUSD float64 // per output (generated) token
	InputWh   float64 // per input token
	OutputWh  float64 // per output token
}

// RatesFor derives per-token rates from a tier's cost block.
//
// Explicit prices: USD per token = USD per million tokens / 1e6; energy is
// unknown and counted as zero.
//
// A GPU profile describes one replica serving the tier. A token occupies
// 1/throughput of a replica-second: prefill tokens at prefill_tokens_per_sec,
// generated tokens at decode_tokens_per_sec. So with
//
//	replica USD per second = gpus × usd_per_gpu_hour / 3600
//	replica watts          = gpus × watts_per_gpu × pue       (pue default 1.2)
//
// the rates are
//
//	USD per input token  = replica USD per second / prefill_tokens_per_sec
//	USD per output token = replica USD per second / decode_tokens_per_sec
//	Wh per input token   = replica watts / prefill_tokens_per_sec / 3600
//	Wh per output token  = replica watts / decode_tokens_per_sec / 3600
//
// Example (Llama-3.1-8B, 1×H100 at 2.50 USD/h, 500 W, PUE 1.2, prefill
// 50,000 tok/s, decode 5,000 tok/s): 0.139 USD per million output tokens,
// 0.0139 USD per million input tokens, 600 W / 5,000 tok/s = 0.12 J =
// 33.3 µWh per output token.
//
// With neither, the tier is free and uses no energy.
func RatesFor(c config.Cost) Rates {
	g := c.GPU
	if g == nil {
		return Rates{InputUSD: c.InputUSDPerMTok / 1e6, OutputUSD: c.OutputUSDPerMTok / 1e6}
	}
	pue := g.PUE
	if pue == 0 {
		pue = DefaultPUE
	}
	usdPerSec := float64(g.GPUs) * g.USDPerGPUHour / 3600
	watts := float64(g.GPUs) * g.WattsPerGPU * pue
	var r Rates
	if g.PrefillTokensPerSec > 0 {
		r.InputUSD = usdPerSec / g.PrefillTokensPerSec
		r.InputWh = watts / g.PrefillTokensPerSec / 3600
	}
	if g.DecodeTokensPerSec > 0 {
		r.OutputUSD = usdPerSec / g.DecodeTokensPerSec
		r.OutputWh = watts / g.DecodeTokensPerSec / 3600
	}
	return r
}

// Pricer prices records for one configuration. It is built once per
// configuration and safe for concurrent use; Price does not allocate.
//
// Records carry integer micro-dollars and milli-watt-hours. A small request
// is worth less than one unit (an 8B-model answer of 10 tokens costs about
// 1.4 µUSD and 0.33 mWh), so rounding each record on its own would lose or
// inflate small requests systematically. Instead each tier keeps running
// totals in thousandths of a unit (nano-dollars, micro-watt-hours) and a
// record gets the whole units its amount carries the running total across:
// floor(total after / 1000) − floor(total before / 1000). Every record is
// within one unit of its exact amount, and the sum of the records of a tier
// is within one unit of the exact sum however many requests there were.
// The running totals start afresh with each configuration.
type Pricer struct {
	tiers    map[string]*tierPricer
	baseline *tierPricer // the most capable (last) tier
}

type tierPricer struct {
	rates Rates
	last  bool
	// Running totals in nano-USD and micro-Wh.
	cost, baseline, energy atomic.Int64
}

// NewPricer builds a pricer for tiers, ordered cheapest first as in the
// configuration. The last tier prices the baseline.
func NewPricer(tiers []config.Tier) *Pricer {
	p := &Pricer{tiers: make(map[string]*tierPricer, len(tiers))}
	for i, t := range tiers {
		tp := &tierPricer{rates: RatesFor(t.Cost), last: i == len(tiers)-1}
		p.tiers[t.Name] = tp
		if tp.last {
			p.baseline = tp
		}
	}
	return p
}

// Rates returns the rates of a tier and whether the tier is known.
func (p *Pricer) Rates(tier string) (Rates, bool) {
	tp, ok := p.tiers[tier]
	if !ok {
		return Rates{}, false
	}
	return tp.rates, true
}

// Price fills rec.CostMicroUSD, rec.EnergyMilliWh and rec.BaselineMicroUSD
// from rec.Tier and the token counts. A record of an unknown tier costs
// nothing; its baseline is still priced. A discarded cascade attempt is
// priced on its own tier and added to the request's cost and energy (and
// is its WastedMicroUSD); the baseline stays the answer served, on the
// largest tier.
func (p *Pricer) Price(rec *Record) {
	if p == nil {
		return
	}
	p.price(rec)
	if d := &rec.Discarded; d.Tier != "" {
		d.CostMicroUSD, d.EnergyMilliWh = 0, 0
		if tp := p.tiers[d.Tier]; tp != nil {
			in, out := float64(max(d.InputTokens, 0)), float64(max(d.OutputTokens, 0))
			d.CostMicroUSD = carry(&tp.cost, (in*tp.rates.InputUSD+out*tp.rates.OutputUSD)*1e9)
			d.EnergyMilliWh = carry(&tp.energy, (in*tp.rates.InputWh+out*tp.rates.OutputWh)*1e6)
		}
		rec.WastedMicroUSD = d.CostMicroUSD
		rec.CostMicroUSD += d.CostMicroUSD
		rec.EnergyMilliWh += d.EnergyMilliWh
	}
}

func (p *Pricer) price(rec *Record) {
	in, out := float64(max(rec.InputTokens, 0)), float64(max(rec.OutputTokens, 0))
	tp := p.tiers[rec.Tier]
	if tp != nil {
		r := &tp.rates
		rec.CostMicroUSD = carry(&tp.cost, (in*r.InputUSD+out*r.OutputUSD)*1e9)
		rec.EnergyMilliWh = carry(&tp.energy, (in*r.InputWh+out*r.OutputWh)*1e6)
		if tp.last {
			rec.BaselineMicroUSD = rec.CostMicroUSD
			return
		}
	} else {
		rec.CostMicroUSD, rec.EnergyMilliWh = 0, 0
	}
	if b := p.baseline; b != nil {
		// Accumulated on the serving tier's totals, so each tier's baseline
		// sum is exact too.
		acc := &b.baseline
		if tp != nil {
			acc = &tp.baseline
		}
		rec.BaselineMicroUSD = carry(acc, (in*b.rates.InputUSD+out*b.rates.OutputUSD)*1e9)
	}
}

// carry adds milli (thousandths of a unit, rounded half up) to total and
// returns the whole units crossed.
func carry(total *atomic.Int64, milli float64) int64 {
	m := int64(milli + 0.5)
	if m <= 0 {
		return 0
	}
	after := total.Add(m)
	return after/1000 - (after-m)/1000
}
