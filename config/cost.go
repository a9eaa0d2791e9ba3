package config

// Cost prices a tier's tokens. Give either explicit prices or a GPU profile
// from which prices and energy are derived; with neither, the tier is free
// and uses no energy (and says so in the records).
type Cost struct {
	// InputUSDPerMTok and OutputUSDPerMTok are explicit prices in US dollars
	// per million tokens.
	InputUSDPerMTok  float64 `yaml:"input_usd_per_mtok"`
	OutputUSDPerMTok float64 `yaml:"output_usd_per_mtok"`
	// GPU derives prices and energy from the hardware serving the tier.
	GPU *GPUProfile `yaml:"gpu"`
}

// GPUProfile describes one replica of a model server.
type GPUProfile struct {
	GPUs          int     `yaml:"gpus"`             // GPUs per replica
	USDPerGPUHour float64 `yaml:"usd_per_gpu_hour"` // rental or amortised price
	WattsPerGPU   float64 `yaml:"watts_per_gpu"`    // average board power under load
	PUE           float64 `yaml:"pue"`              // data-centre overhead; default 1.2
	// Throughput of one replica at its usual batch size.
	PrefillTokensPerSec float64 `yaml:"prefill_tokens_per_sec"`
	DecodeTokensPerSec  float64 `yaml:"decode_tokens_per_sec"`
}

func (c *Config) validateCost(field string, k Cost, bad func(field, format string, a ...any)) {
	if k.InputUSDPerMTok < 0 {
		bad(field+".input_usd_per_mtok", "must not be negative, got %g", k.InputUSDPerMTok)
	}
	if k.OutputUSDPerMTok < 0 {
		bad(field+".output_usd_per_mtok", "must not be negative, got %g", k.OutputUSDPerMTok)
	}
	g := k.GPU
	if g == nil {
		return
	}
	if k.InputUSDPerMTok != 0 || k.OutputUSDPerMTok != 0 {
		bad(field, "give either explicit prices or a gpu profile, not both")
	}
	if g.GPUs <= 0 {
		bad(field+".gpu.gpus", "must be at least 1, got %d", g.GPUs)
	}
	if g.USDPerGPUHour < 0 {
		bad(field+".gpu.usd_per_gpu_hour", "must not be negative, got %g", g.USDPerGPUHour)
	}
	if g.WattsPerGPU < 0 {
		bad(field+".gpu.watts_per_gpu", "must not be negative, got %g", g.WattsPerGPU)
	}
	if g.PUE != 0 && g.PUE < 1 {
		bad(field+".gpu.pue", "must be at least 1 (or unset for 1.2), got %g", g.PUE)
	}
	if g.PrefillTokensPerSec <= 0 {
		bad(field+".gpu.prefill_tokens_per_sec", "must be positive, got %g", g.PrefillTokensPerSec)
	}
	if g.DecodeTokensPerSec <= 0 {
		bad(field+".gpu.decode_tokens_per_sec", "must be positive, got %g", g.DecodeTokensPerSec)
	}
}
