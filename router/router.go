// Package router decides which tier serves a request: it scores the prompt's
// complexity and compiles the routing configuration into a Policy.
package router

import (
	"errors"
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
	Tier  string
	Score float64
	// Threshold is the threshold the score was compared with (the calibrated
	// one in target-rate mode, an alias's own when it has one).
	Threshold float64
	// Escalated is true when the request goes past the cheapest tier.
	Escalated bool
	// Reason says why it escalated: "score", "alias", "header" or
	// "context"; "" when it did not.
	Reason string
	// Cascade is true when the answer of Tier (the cheapest) must be judged
	// before it reaches the client (Policy.Judge), and escalated if doubted.
	Cascade bool
	// Tokens is the context the request needs (estimated prompt tokens plus
	// max_tokens); 0 when no tier declares max_context_tokens, since then it
	// is not computed.
	Tokens int
	// Overflow: the request fits no tier's context (Route then also returns
	// ErrContextLength).
	Overflow bool
}

// Reasons for an escalation.
const (
	ReasonScore  = "score"
	ReasonAlias  = "alias"
	ReasonHeader = "header"
	// ReasonContext: the request does not fit the cheaper tiers' context.
	ReasonContext = "context"
)

// ErrUnknownTier is returned for a tier override that names no tier.
var ErrUnknownTier = errors.New("unknown tier")

// ErrContextLength is returned when a request fits no tier's context (or not
// the tier a header pins). The gateway answers 400 context_length_exceeded.
var ErrContextLength = errors.New("context length exceeded")

// aliasMode is how an alias decides.
type aliasMode uint8

const (
	modeAuto   aliasMode = iota // the routing policy
	modeFixed                   // its own fixed threshold
	modeNever                   // always the cheapest tier
	modeAlways                  // always the most capable tier
)

type aliasPolicy struct {
	mode      aliasMode
	threshold float64
	strategy  strategy
}

// Policy is a compiled routing configuration. Its settings never change after
// Compile; in target-rate mode its Calibrator moves the threshold.
type Policy struct {
	scorer      Scorer
	threshold   float64     // fixed mode, and the calibrator's warm-up
	cal         *Calibrator // nil in fixed mode
	tiers       []string    // cheapest first
	contexts    []int       // max_context_tokens per tier; 0: unknown
	limited     bool        // some tier declares a context
	small       string
	large       string
	aliases     map[string]aliasPolicy
	allowHeader bool
	strategy    strategy // of "auto" and aliases without a mode of their own
	judge       judge    // the verifier threshold and hybrid band (cascade.go)
}

// Compile builds a Policy for tiers ordered cheapest first (their names and
// max_context_tokens are what it reads). In target-rate
// mode it keeps prev, the calibrator of the policy it replaces, when prev
// matches c (same target, window and scorer), so a reload does not lose the
// calibration; otherwise it starts a new one. prev may be nil.
func Compile(c config.Routing, tiers []config.Tier, prev *Calibrator) (*Policy, error) {
	return CompileFrom(c, tiers, &Policy{cal: prev})
}

// CompileFrom is Compile keeping every calibrator of prev (the policy being
// replaced, may be nil) whose settings still match.
func CompileFrom(c config.Routing, tiers []config.Tier, prevPolicy *Policy) (*Policy, error) {
	var prev *Calibrator
	var prevJudge *judge
	if prevPolicy != nil {
		prev, prevJudge = prevPolicy.cal, &prevPolicy.judge
	}
	if len(tiers) == 0 {
		return nil, fmt.Errorf("router: no tiers")
	}
	scorer, err := NewScorer(c)
	if err != nil {
		return nil, err
	}
	p := &Policy{
		scorer:      scorer,
		threshold:   c.Threshold,
		tiers:       make([]string, len(tiers)),
		contexts:    make([]int, len(tiers)),
		aliases:     make(map[string]aliasPolicy, len(c.Aliases)),
		allowHeader: c.AllowTierHeader,
		strategy:    strategyOf(c.Mode),
		judge:       compileJudge(c, prevJudge),
	}
	for i, t := range tiers {
		if t.MaxContextTokens < 0 {
			return nil, fmt.Errorf("router: tier %q: max_context_tokens must not be negative", t.Name)
		}
		p.tiers[i], p.contexts[i] = t.Name, t.MaxContextTokens
		p.limited = p.limited || t.MaxContextTokens > 0
	}
	p.small, p.large = p.tiers[0], p.tiers[len(tiers)-1]
	if c.TargetEscalationRate > 0 {
		if prev.Matches(c) {
			p.cal = prev
		} else {
			p.cal = NewCalibrator(c)
		}
	}
	for _, a := range c.Aliases {
		ap := aliasPolicy{mode: modeAuto, strategy: p.strategy}
		switch a.Mode {
		case "", "auto", config.ModeRoute, config.ModeCascade, config.ModeHybrid:
			if a.Mode != "" && a.Mode != "auto" {
				ap.strategy = strategyOf(a.Mode)
			}
			if a.Threshold != nil {
				ap.mode, ap.threshold = modeFixed, *a.Threshold
			}
		case "never":
			ap.mode = modeNever
		case "always":
			ap.mode = modeAlways
		default:
			return nil, fmt.Errorf("router: alias %q: mode must be auto, never, always, route, cascade or hybrid, got %q", a.Name, a.Mode)
		}
		p.aliases[a.Name] = ap
	}
	return p, nil
}

// Scorer is the policy's scorer (routing.scorer).
func (p *Policy) Scorer() Scorer { return p.scorer }

// Calibrator is the policy's calibrator, nil with a fixed threshold.
func (p *Policy) Calibrator() *Calibrator { return p.cal }

// Threshold is the threshold requests with model "auto" are compared with
// now.
func (p *Policy) Threshold() float64 {
	if a, ok := p.aliases["auto"]; ok && a.mode == modeFixed {
		return a.threshold
	}
	if p.cal != nil {
		return p.cal.Threshold()
	}
	return p.threshold
}

// TargetRate is the target escalation rate, 0 with a fixed threshold.
func (p *Policy) TargetRate() float64 {
	if p.cal == nil {
		return 0
	}
	return p.cal.Target()
}

// Tiers are the policy's tiers, cheapest first. Callers must not modify it.
func (p *Policy) Tiers() []string { return p.tiers }

// Decide scores in and picks a tier for model "auto". Pure CPU, no I/O, no
// allocations. In target-rate mode the score feeds the calibration. When the
// request fits no tier's context, Overflow is set (and Tier is the tier
// chosen without context limits); Route returns ErrContextLength instead.
func (p *Policy) Decide(in *Input) Decision {
	d, _ := p.decide("auto", "", in, true)
	return d
}

// Route decides for a request that named model (auto or an alias; any other
// name is treated as auto) and carried tierHeader, the X-Cascade-Tier header
// ("" when absent). The header pins the tier when the config allows it and is
// ignored otherwise; naming no tier it returns ErrUnknownTier. A request
// never goes to a tier whose context it does not fit: it moves to the
// cheapest bigger tier that fits (Reason "context"), else the closest cheaper
// one; when none fits, or the header pins one it does not fit, it returns
// ErrContextLength. In target-rate mode, the scores of requests decided by
// the calibrated threshold feed the calibration. No allocations unless it
// returns an error.
func (p *Policy) Route(model, tierHeader string, in *Input) (Decision, error) {
	return p.decide(model, tierHeader, in, true)
}

// DryRun is Route without feeding the calibration: what the policy would do
// now.
func (p *Policy) DryRun(model, tierHeader string, in *Input) (Decision, error) {
	return p.decide(model, tierHeader, in, false)
}

func (p *Policy) decide(model, tierHeader string, in *Input, observe bool) (Decision, error) {
	d, err := p.route(model, tierHeader, in, observe)
	if err != nil || !p.limited {
		return d, err
	}
	d.Tokens = need(in)
	if p.allowHeader && tierHeader != "" { // a pin: that tier or none
		if !p.fitsAt(p.index(d.Tier), d.Tokens) {
			d.Overflow = true
			return d, p.contextErr(d.Tokens, in, d.Tier)
		}
		return d, nil
	}
	if !p.fit(&d, d.Tokens) {
		d.Overflow = true
		return d, p.contextErr(d.Tokens, in, "")
	}
	if d.Tier != p.small {
		d.Cascade = false // only the cheapest tier's answers are judged
	}
	return d, nil
}

func (p *Policy) index(tier string) int {
	for i, t := range p.tiers {
		if t == tier {
			return i
		}
	}
	return 0
}

func (p *Policy) contextErr(n int, in *Input, tier string) error {
	if tier != "" {
		return fmt.Errorf("%w: the request needs about %d tokens (prompt about %d, max_tokens %d); tier %s holds %d",
			ErrContextLength, n, n-max(in.MaxTokens, 0), max(in.MaxTokens, 0), tier, p.contexts[p.index(tier)])
	}
	return fmt.Errorf("%w: the request needs about %d tokens (prompt about %d, max_tokens %d); the largest context is %d",
		ErrContextLength, n, n-max(in.MaxTokens, 0), max(in.MaxTokens, 0), p.MaxContext())
}

func (p *Policy) route(model, tierHeader string, in *Input, observe bool) (Decision, error) {
	ap, ok := p.aliases[model]
	if !ok {
		ap.strategy = p.strategy
	}
	d := Decision{Tier: p.small, Score: p.scorer.Score(in)}
	if p.allowHeader && tierHeader != "" {
		for i, t := range p.tiers {
			if t == tierHeader {
				d.Tier, d.Threshold = t, p.autoThreshold(ap)
				if i > 0 {
					d.Escalated, d.Reason = true, ReasonHeader
				}
				return d, nil
			}
		}
		return Decision{}, fmt.Errorf("%w %q", ErrUnknownTier, tierHeader)
	}
	if p.large != p.small && ap.mode != modeNever && ap.mode != modeAlways {
		switch ap.strategy {
		case stratCascade:
			d.Cascade, d.Threshold = true, p.judge.threshold
			return d, nil
		case stratHybrid:
			b, edge := p.judge.band(d.Score, observe)
			d.Threshold = edge
			switch b {
			case 1:
				d.Tier, d.Escalated, d.Reason = p.large, true, ReasonScore
			case 0:
				d.Cascade = true
			}
			return d, nil
		}
	}
	var esc bool
	switch ap.mode {
	case modeNever:
		d.Threshold = p.autoThreshold(ap)
		return d, nil
	case modeAlways:
		d.Threshold = p.autoThreshold(ap)
		if p.large != p.small {
			d.Tier, d.Escalated, d.Reason = p.large, true, ReasonAlias
		}
		return d, nil
	case modeFixed:
		d.Threshold = ap.threshold
		esc = d.Score >= ap.threshold
	default:
		if p.cal != nil {
			if observe {
				esc, d.Threshold = p.cal.Decide(d.Score)
			} else {
				ct := p.cal.cut.Load()
				esc, d.Threshold = ct.escalates(d.Score), ct.threshold
			}
		} else {
			d.Threshold = p.threshold
			esc = d.Score >= p.threshold
		}
	}
	if esc && p.large != p.small {
		d.Tier, d.Escalated, d.Reason = p.large, true, ReasonScore
	}
	return d, nil
}

func (p *Policy) autoThreshold(ap aliasPolicy) float64 {
	if ap.mode == modeFixed {
		return ap.threshold
	}
	if p.cal != nil {
		return p.cal.Threshold()
	}
	return p.threshold
}
