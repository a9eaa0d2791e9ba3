package config

import (
	"fmt"
	"time"
)

// Routing modes: how a request with model "auto" (or an alias) is decided.
const (
	// ModeRoute decides on the prompt alone, before any model runs.
	ModeRoute = "route"
	// ModeCascade sends every request to the cheapest tier first, judges
	// its answer and escalates the answers the verifier doubts.
	ModeCascade = "cascade"
	// ModeHybrid lets the prompt score settle the clear cases (clearly
	// hard: straight to the last tier; clearly easy: the cheapest tier
	// without a check) and cascades the band in between.
	ModeHybrid = "hybrid"
)

// Cascade tunes the answer-aware modes (cascade and hybrid).
type Cascade struct {
	// Threshold: a verifier score (the estimated chance that the cheap
	// answer is wrong) at or above it escalates. Default 0.5.
	Threshold float64 `yaml:"threshold"`
	// TargetEscalationRate, when above 0, replaces the fixed threshold: it
	// follows the recent verifier scores (of the fleet, when the routing
	// calibration is shared) so that about this share of verified answers
	// escalates. Within (0, 1).
	TargetEscalationRate float64 `yaml:"target_escalation_rate"`
	// ModelFile replaces the built-in verifier model (written by
	// cascade train --answers).
	ModelFile string `yaml:"model_file"`
	// TopLogprobs is how many alternatives per token the gateway asks the
	// first tier for, to judge its confidence. Default 5; within [0, 20].
	// Answers from backends that send no logprobs are judged on their text.
	TopLogprobs int `yaml:"top_logprobs"`
	// Hold bounds how much of a streamed answer is held back while it is
	// judged.
	Hold Hold `yaml:"hold"`
	// Hybrid sets the prompt-score band that is cascaded in hybrid mode.
	Hybrid Hybrid `yaml:"hybrid"`
}

// Hold bounds the part of a cheap streamed answer that is held back from the
// client until the verifier has judged it. An answer that completes within
// both limits is judged whole; otherwise the verifier judges the part held
// when the first limit is reached, and a pass releases it and relays the
// rest live. Time to first byte in cascade mode is about the hold time.
type Hold struct {
	// MaxTokens is how many answer tokens are held at most. Default 256.
	MaxTokens int `yaml:"max_tokens"`
	// MaxWait is how long an answer is held at most. Default 10s.
	MaxWait time.Duration `yaml:"max_wait"`
}

// Hybrid is the band of prompt scores that hybrid mode cascades: below Low
// the cheapest tier serves without a check, at or above High the last tier
// serves directly.
type Hybrid struct {
	// Low and High are fixed band edges. Defaults 0.3 and 0.9.
	Low  float64 `yaml:"low"`
	High float64 `yaml:"high"`
	// DirectSmallShare and DirectLargeShare, when above 0, replace the fixed
	// edges: each follows the recent prompt scores so that about this share
	// of requests is served directly by the cheapest (below the band) or
	// the last tier (above it).
	DirectSmallShare float64 `yaml:"direct_small_share"`
	DirectLargeShare float64 `yaml:"direct_large_share"`
}

// defaultCascade are the answer-aware defaults. The 0.5 threshold is the
// verifier's own decision boundary (it estimates the chance of a wrong
// answer); 256 tokens hold most short answers whole, and 10s bounds the
// first byte of a long one.
func defaultCascade() Cascade {
	return Cascade{Threshold: 0.5, TopLogprobs: 5, Hold: Hold{MaxTokens: 256, MaxWait: 10 * time.Second},
		Hybrid: Hybrid{Low: 0.3, High: 0.9}}
}

func validMode(m string) bool { return m == ModeRoute || m == ModeCascade || m == ModeHybrid }

func (c *Config) validateCascade(bad func(field, format string, a ...any)) {
	r := &c.Routing
	if !validMode(r.Mode) {
		bad("routing.mode", "must be route, cascade or hybrid, got %q", r.Mode)
	}
	cc := &r.Cascade
	if cc.Threshold < 0 || cc.Threshold > 1 {
		bad("routing.cascade.threshold", "must be within [0, 1], got %g", cc.Threshold)
	}
	if t := cc.TargetEscalationRate; t < 0 || t >= 1 {
		bad("routing.cascade.target_escalation_rate", "must be within (0, 1), or 0 for a fixed threshold; got %g", t)
	}
	if cc.TopLogprobs < 0 || cc.TopLogprobs > 20 {
		bad("routing.cascade.top_logprobs", "must be within [0, 20], got %d", cc.TopLogprobs)
	}
	if cc.Hold.MaxTokens <= 0 {
		bad("routing.cascade.hold.max_tokens", "must be positive, got %d", cc.Hold.MaxTokens)
	}
	if cc.Hold.MaxWait <= 0 {
		bad("routing.cascade.hold.max_wait", "must be a positive duration, got %v", cc.Hold.MaxWait)
	}
	h := &cc.Hybrid
	if h.Low < 0 || h.High > 1 || h.Low > h.High {
		bad("routing.cascade.hybrid", "needs 0 <= low <= high <= 1, got low %g, high %g", h.Low, h.High)
	}
	if s := h.DirectSmallShare; s < 0 || s >= 1 {
		bad("routing.cascade.hybrid.direct_small_share", "must be within (0, 1), or 0 for the fixed edge; got %g", s)
	}
	if s := h.DirectLargeShare; s < 0 || s >= 1 {
		bad("routing.cascade.hybrid.direct_large_share", "must be within (0, 1), or 0 for the fixed edge; got %g", s)
	}
	if h.DirectSmallShare+h.DirectLargeShare >= 1 {
		bad("routing.cascade.hybrid", "direct_small_share + direct_large_share must be below 1, got %g",
			h.DirectSmallShare+h.DirectLargeShare)
	}
	for i, a := range r.Aliases {
		switch a.Mode {
		case "", "auto", "never", "always", ModeRoute, ModeCascade, ModeHybrid:
		default:
			bad(fmt.Sprintf("routing.aliases[%d].mode", i),
				"must be auto, never, always, route, cascade or hybrid, got %q", a.Mode)
		}
	}
}
