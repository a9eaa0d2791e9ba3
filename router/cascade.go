package router

import "github.com/cascade-gateway/cascade/config"

// ReasonConfidence is the escalation of a cheap answer the verifier doubted.
const ReasonConfidence = "confidence"

// strategy is how an auto alias decides: on the prompt alone, or by judging
// the cheapest tier's answer (cascade), or both (hybrid).
type strategy uint8

const (
	stratRoute strategy = iota
	stratCascade
	stratHybrid
)

func strategyOf(mode string) strategy {
	switch mode {
	case config.ModeCascade:
		return stratCascade
	case config.ModeHybrid:
		return stratHybrid
	}
	return stratRoute
}

// judge is the compiled answer-aware part of a policy: the verifier's
// threshold (fixed, or calibrated to a target escalation rate) and the
// hybrid band.
type judge struct {
	threshold float64
	cal       *Calibrator // verifier scores; nil with a fixed threshold
	low, high float64
	// lowCal and highCal move the hybrid band edges to target shares; nil
	// for fixed edges.
	lowCal, highCal *Calibrator
}

// calibrated returns prev when it holds the same target and window, else a
// new calibrator; nil when target is 0.
func calibrated(r config.Routing, target float64, prev *Calibrator) *Calibrator {
	if target <= 0 {
		return nil
	}
	c := config.Routing{TargetEscalationRate: target, Calibration: r.Calibration, Scorer: r.Scorer, ModelFile: r.ModelFile}
	if prev.Matches(c) {
		return prev
	}
	return NewCalibrator(c)
}

func compileJudge(r config.Routing, prev *judge) judge {
	if prev == nil {
		prev = &judge{}
	}
	c := r.Cascade
	j := judge{threshold: c.Threshold, low: c.Hybrid.Low, high: c.Hybrid.High}
	j.cal = calibrated(r, c.TargetEscalationRate, prev.cal)
	j.highCal = calibrated(r, c.Hybrid.DirectLargeShare, prev.highCal)
	if s := c.Hybrid.DirectSmallShare; s > 0 {
		// The low edge escalates (out of the direct-small share) all but s.
		j.lowCal = calibrated(r, 1-s, prev.lowCal)
	}
	return j
}

// band places a hybrid request's prompt score: -1 below the band (cheapest
// tier, no check), +1 at or above it (last tier), 0 inside (cascade).
func (j *judge) band(score float64, observe bool) (int, float64) {
	low, high := j.low, j.high
	var aboveLow, aboveHigh bool
	if j.lowCal != nil {
		if observe {
			aboveLow, low = j.lowCal.Decide(score)
		} else {
			aboveLow, low = j.lowCal.Escalates(score), j.lowCal.Threshold()
		}
	} else {
		aboveLow = score >= low
	}
	if j.highCal != nil {
		if observe {
			aboveHigh, high = j.highCal.Decide(score)
		} else {
			aboveHigh, high = j.highCal.Escalates(score), j.highCal.Threshold()
		}
	} else {
		aboveHigh = score >= high
	}
	switch {
	case aboveHigh:
		return 1, high
	case !aboveLow:
		return -1, low
	}
	return 0, high
}

// Verdict is the policy's judgement of a cheap answer.
type Verdict struct {
	// Escalate is true when the answer should be replaced by the last
	// tier's.
	Escalate bool
	// Score is the verifier's score; Threshold what it was compared with.
	Score, Threshold float64
}

// Judge decides on a verifier score (higher: more likely wrong) for a
// request the policy cascaded. In target-rate mode the score feeds the
// calibration. Pure CPU, no allocations.
func (p *Policy) Judge(score float64) Verdict {
	v := Verdict{Score: score, Threshold: p.judge.threshold}
	if p.judge.cal != nil {
		v.Escalate, v.Threshold = p.judge.cal.Decide(score)
		return v
	}
	v.Escalate = score >= v.Threshold
	return v
}

// JudgeCalibrator is the calibrator of the verifier threshold, nil when it
// is fixed.
func (p *Policy) JudgeCalibrator() *Calibrator { return p.judge.cal }

// Large is the most capable tier, where doubted answers escalate to.
func (p *Policy) Large() string { return p.large }
