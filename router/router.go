// Package router decides which tier serves a request: it scores the prompt's
// complexity and compiles the routing configuration into a Policy.
package router

import (
	"fmt"

	"github.com/cascade-gateway/cascade/config"
)

// Message is one chat message as the router sees it: role and plain text.
type Message struct {
	Role    string
	Content string
}

// Input is what the gateway hands the router: the prompt text and the request
// facts that hint at difficulty. It is read-only to the router.
type Input struct {
	Messages          []Message
	HasTools          bool
	HasResponseFormat bool
	// MaxTokens is the requested output bound; 0 means unset.
	MaxTokens int
}

// Scorer returns the probability-like need for the large model, in [0, 1].
// It must be pure, safe for concurrent use and allocation-free: it runs on
// every request.
type Scorer interface {
	Score(in *Input) float64
}

// LengthScorer scores by prompt length alone: a baseline, and the placeholder
// until a learned scorer is configured.
type LengthScorer struct {
	// Saturation is the length in bytes that scores 1. 0 means 4000.
	Saturation int
}

var _ Scorer = LengthScorer{}

// Score implements Scorer.
func (s LengthScorer) Score(in *Input) float64 {
	sat := s.Saturation
	if sat <= 0 {
		sat = 4000
	}
	n := 0
	for i := range in.Messages {
		n += len(in.Messages[i].Content)
	}
	if n >= sat {
		return 1
	}
	return float64(n) / float64(sat)
}

// Decision is the router's output for one request.
type Decision struct {
	// Tier is the name of the tier to serve on.
	Tier      string
	Score     float64
	Threshold float64
	// Escalated is true when the score sent the request past the default tier.
	Escalated bool
}

// Policy is a compiled routing configuration. It never changes after Compile.
type Policy struct {
	scorer    Scorer
	threshold float64
	small     string
	large     string
}

// Compile builds a Policy for tiers ordered cheapest first.
func Compile(c config.Routing, tiers []string) (*Policy, error) {
	if len(tiers) == 0 {
		return nil, fmt.Errorf("router: no tiers")
	}
	return &Policy{
		scorer:    LengthScorer{},
		threshold: c.Threshold,
		small:     tiers[0],
		large:     tiers[len(tiers)-1],
	}, nil
}

// Decide scores in and picks a tier. Pure CPU, no I/O.
func (p *Policy) Decide(in *Input) Decision {
	s := p.scorer.Score(in)
	d := Decision{Tier: p.small, Score: s, Threshold: p.threshold}
	if s >= p.threshold && p.large != p.small {
		d.Tier, d.Escalated = p.large, true
	}
	return d
}
