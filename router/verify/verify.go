// Package verify judges a small model's answer before the client sees it: a
// pure, allocation-free function of the prompt, the answer text, its token
// log-probabilities when the backend returns them, and the finish reason,
// giving the probability-like risk that the answer is wrong (higher =
// escalate to a larger model).
//
// The score is a logistic regression over answer features that make sense
// for any model's answers (confidence of the generated tokens, truncation,
// hedging, arithmetic that does not add up, code that is not complete, a
// multiple-choice answer that names no option...). Its weights are trained
// offline by `cascade train --answers` and built in; Load replaces them.
package verify

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"

	"github.com/cascade-gateway/cascade/router"
)

// Token is one generated token as the verifier sees it.
type Token struct {
	// Logprob is the log-probability of the generated token.
	Logprob float32
	// Top holds the log-probabilities of the most likely tokens at this
	// position (OpenAI's top_logprobs), in any order, usually including the
	// generated one. Empty when the backend returned none.
	Top []float32
	// Blank is true for a token of whitespace only.
	Blank bool
}

// Answer is what the small model returned.
type Answer struct {
	// Text is the answer's content.
	Text string
	// FinishReason is OpenAI's finish_reason ("stop", "length", ...); ""
	// when unknown.
	FinishReason string
	// Tokens are the answer's tokens with their log-probabilities, in order;
	// nil when the backend returned no logprobs (the text features decide).
	Tokens []Token
}

// ModelFormat identifies the verifier's model file format.
const ModelFormat = "cascade-verifier/2"

//go:embed models/default.json
var defaultJSON []byte

// Verifier scores answers. It is immutable once built and safe for
// concurrent use; Score does not allocate.
//
// The logit of an answer's risk is the sum of two parts. The text part is a
// logistic regression per answer class over the answer's text features (a
// class without its own weights uses the pooled one). The confidence part
// applies only to answers with token logprobs: a logistic regression over
// the token-confidence features, counted relative to the average confidence
// of its training answers, so that it moves the class's base rate up or
// down. A class fitted on answers without logprobs has its text evidence
// scaled by the model's LogprobTextWeight when the answer carries logprobs,
// because the two kinds of evidence overlap.
type Verifier struct {
	file modelFile
	// Standardisation for the hot path: z = clamp((x − mean)·inv, ±zClip).
	mean, inv [NumFeatures]float64
	w         [numClasses][NumFeatures]float64
	bias      [numClasses]float64
	has       [numClasses]bool
	// withLogprobs: the class was fitted on answers with logprobs, its
	// weights are what the text adds to the confidence part.
	withLogprobs [numClasses]bool
	// The confidence part: logit = confBias + conf·z − confCenter.
	conf       [NumFeatures]float64
	confBias   float64
	confCenter float64
	hasConf    bool
	damp       float64
}

// zClip bounds every standardised feature, so that a value far outside the
// training range (a feature nearly constant there, an answer unlike any
// seen) moves the score by a bounded amount instead of extrapolating.
const zClip = 4

// Answer classes: the answer's format, a structural gate. Each may have its
// own weights; the pooled model covers the rest.
const (
	classAll = iota
	classChoiceLogprobs
	classChoice
	classMath
	classCode
	classProse
	numClasses
)

var classNames = [numClasses]string{"all", "choice_logprobs", "choice", "math", "code", "prose"}

// classOf returns the class of an answer from its features.
func classOf(x *Features) int {
	switch {
	case x[fFmtChoice] == 1 && x[fHasLogprobs] == 1:
		return classChoiceLogprobs
	case x[fFmtChoice] == 1:
		return classChoice
	case x[fFmtMath] == 1:
		return classMath
	case x[fFmtCode] == 1:
		return classCode
	}
	return classProse
}

// isConfidence reports whether feature i belongs to the confidence part.
// The largest token NLL (min_nll) is left out: it grows with the answer's
// length, so a model fitted on one-token answers cannot be applied to long
// ones through it.
func isConfidence(i int) bool { return i >= fFirstRisk && i <= fQ10Risk && i != fMinNLL }

// isText reports whether feature i belongs to the text part: everything but
// the token features and the logprobs gate.
func isText(i int) bool { return i != fHasLogprobs && !(i >= fFirstRisk && i <= fQ10Risk) }

// Feature groups, the structural gate of the text features: a group's
// features count only for answers it describes, and elsewhere sit at
// their mean. What a missing equation or an unnamed option says about an
// answer of one kind does not carry over to another, least of all to a
// kind never seen in training (free-form prose).
const (
	groupAny     = iota
	groupChoice  // multiple-choice answers
	groupMath    // answers of the math format
	groupCode    // answers with code
	groupProse   // answers of no other format
	groupNumbers // answers with at least one number
)

// groupOf returns the group of text feature i.
func groupOf(i int) int {
	switch {
	case i == fOptions || i == fNegatedStem || i == fFmtChoice || i == fAnswerLenChoice || i >= fNoChoice && i <= fChoiceAllNone:
		return groupChoice
	case i == fFmtMath || i == fAnswerLenMath:
		return groupMath
	case i == fFmtCode || i == fAnswerLenCode || i >= fFences && i <= fProseShare:
		return groupCode
	case i == fFmtProse:
		return groupProse
	case i >= fFinalMarker && i <= fEqWrongAny:
		return groupNumbers
	}
	return groupAny
}

var featureGroup = func() (g [NumFeatures]uint8) {
	for i := range g {
		g[i] = uint8(groupOf(i))
	}
	return g
}()

// groups returns the set of groups (bit i: group i) that describe an
// answer.
func groups(x *Features) uint8 {
	g := uint8(1 << groupAny)
	switch {
	case x[fFmtChoice] == 1:
		g |= 1 << groupChoice
	case x[fFmtMath] == 1:
		g |= 1 << groupMath
	case x[fFmtCode] == 1:
		g |= 1 << groupCode
	default:
		g |= 1 << groupProse
	}
	if x[fNumbers] > 0 {
		g |= 1 << groupNumbers
	}
	return g
}

// modelFile is the serialised model.
type modelFile struct {
	Format string `json:"format"`
	// Features names the features in order; Mean and Scale standardise them.
	Features []string  `json:"features"`
	Mean     []float64 `json:"mean"`
	Scale    []float64 `json:"scale"`
	// Confidence is the token-confidence model, null when the training data
	// had no logprobs (answers with logprobs are then scored by text alone).
	Confidence *confModel `json:"confidence"`
	// LogprobTextWeight scales the text evidence of a class fitted without
	// logprobs when the answer has them, in [0, 1].
	LogprobTextWeight float64 `json:"logprob_text_weight"`
	// Models are logistic regressions over the standardised text features:
	// the pooled one ("all", required) and one per answer class that had
	// enough training rows.
	Models []classModel `json:"models"`
	// Meta records how the model was trained (informational).
	Meta json.RawMessage `json:"meta,omitempty"`
}

type classModel struct {
	Class string `json:"class"`
	Rows  int    `json:"rows"`
	// Logprobs is true when the class was fitted on answers with logprobs,
	// with the confidence part as a fixed offset.
	Logprobs bool      `json:"logprobs,omitempty"`
	Weights  []float64 `json:"weights"`
	Bias     float64   `json:"bias"`
}

// confModel is the confidence part: a logistic regression over the
// standardised token-confidence features, fitted on answers with logprobs.
// Center is the logit of those answers' mean risk: the part adds
// (bias + weights·z) − Center to the text part's logit.
type confModel struct {
	Rows    int       `json:"rows"`
	Weights []float64 `json:"weights"`
	Bias    float64   `json:"bias"`
	Center  float64   `json:"center"`
}

// defaultVerifier parses the built-in model on first use, so that a binary
// that never scores (or retrains a model of a new format) starts anyway.
var defaultVerifier = sync.OnceValue(func() *Verifier {
	v, err := Parse(defaultJSON)
	if err != nil {
		panic("verify: built-in model is invalid: " + err.Error())
	}
	return v
})

// Default returns the verifier built into the binary.
func Default() *Verifier { return defaultVerifier() }

// Load reads a model file written by `cascade train --answers`.
func Load(path string) (*Verifier, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("verify: model: %w", err)
	}
	v, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("verify: model %s: %w", path, err)
	}
	return v, nil
}

// ErrModel is returned for a model file that does not fit this verifier.
var ErrModel = errors.New("invalid verifier model")

// Parse decodes a serialised model.
func Parse(b []byte) (*Verifier, error) {
	var f modelFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrModel, err)
	}
	if f.Format != ModelFormat {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrModel, f.Format, ModelFormat)
	}
	if !slices.Equal(f.Features, featureNames[:]) {
		return nil, fmt.Errorf("%w: its features differ from this build's (retrain it)", ErrModel)
	}
	if len(f.Mean) != NumFeatures || len(f.Scale) != NumFeatures {
		return nil, fmt.Errorf("%w: want %d means and scales", ErrModel, NumFeatures)
	}
	if !(f.LogprobTextWeight >= 0 && f.LogprobTextWeight <= 1) {
		return nil, fmt.Errorf("%w: logprob_text_weight must be within [0, 1]", ErrModel)
	}
	v := &Verifier{file: f, damp: f.LogprobTextWeight}
	for i := range NumFeatures {
		if !finite(f.Mean[i]) || !finite(f.Scale[i]) || f.Scale[i] <= 0 {
			return nil, fmt.Errorf("%w: feature %s: mean and scale must be finite, scale > 0", ErrModel, f.Features[i])
		}
		v.mean[i], v.inv[i] = f.Mean[i], 1/f.Scale[i]
	}
	if c := f.Confidence; c != nil {
		if len(c.Weights) != NumFeatures || !finite(c.Bias) || !finite(c.Center) {
			return nil, fmt.Errorf("%w: confidence: want %d weights, a finite bias and center", ErrModel, NumFeatures)
		}
		v.hasConf, v.confBias, v.confCenter = true, c.Bias, c.Center
		for i, w := range c.Weights {
			if !finite(w) || (w != 0 && !isConfidence(i)) {
				return nil, fmt.Errorf("%w: confidence: weight %s must be finite, and 0 outside the token-confidence features", ErrModel, f.Features[i])
			}
			v.conf[i] = w
		}
	}
	for _, m := range f.Models {
		c := slices.Index(classNames[:], m.Class)
		if c < 0 || v.has[c] {
			return nil, fmt.Errorf("%w: unknown or repeated class %q", ErrModel, m.Class)
		}
		if len(m.Weights) != NumFeatures || !finite(m.Bias) {
			return nil, fmt.Errorf("%w: class %s: want %d weights and a finite bias", ErrModel, m.Class, NumFeatures)
		}
		v.has[c], v.bias[c], v.withLogprobs[c] = true, m.Bias, m.Logprobs
		for i, w := range m.Weights {
			if !finite(w) || (w != 0 && !isText(i)) {
				return nil, fmt.Errorf("%w: class %s: weight %s must be finite, and 0 outside the text features", ErrModel, m.Class, f.Features[i])
			}
			v.w[c][i] = w
		}
	}
	if !v.has[classAll] {
		return nil, fmt.Errorf("%w: no pooled (\"all\") model", ErrModel)
	}
	return v, nil
}

// class returns the model that scores x.
func (v *Verifier) class(x *Features) int {
	if c := classOf(x); v.has[c] {
		return c
	}
	return classAll
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// Marshal serialises the model.
func (v *Verifier) Marshal() ([]byte, error) { return json.MarshalIndent(v.file, "", " ") }

// Meta returns the training metadata stored in the model.
func (v *Verifier) Meta() json.RawMessage { return v.file.Meta }

// Score returns the risk that the answer is wrong, in [0, 1]: higher means
// escalate. prompt may be nil. It is pure, safe for concurrent use and does
// not allocate; its cost is linear in the prompt and answer sizes (both
// scanned up to a bound).
func (v *Verifier) Score(prompt *router.Input, a *Answer) float64 {
	var x Features
	Extract(prompt, a, &x)
	return sigmoid(v.logit(&x))
}

// z returns feature i of x standardised and clipped; 0 (the mean) for a
// feature of a group that does not describe the answer (gs: its groups).
func (v *Verifier) z(x *Features, i int, gs uint8) float64 {
	if gs&(1<<featureGroup[i]) == 0 {
		return 0
	}
	return min(max((float64(x[i])-v.mean[i])*v.inv[i], -zClip), zClip)
}

// parts returns the class scoring x, the text part of the logit without
// the class bias (already scaled for an answer with logprobs) and the
// confidence part (0 without logprobs).
func (v *Verifier) parts(x *Features) (c int, text, conf float64, textScale float64) {
	c = v.class(x)
	lp := x[fHasLogprobs] == 1 && v.hasConf
	w, gs := &v.w[c], groups(x)
	for i := range x {
		z := v.z(x, i, gs)
		text += w[i] * z
		if lp {
			conf += v.conf[i] * z
		}
	}
	textScale = 1
	if lp {
		conf += v.confBias - v.confCenter
		if !v.withLogprobs[c] {
			textScale = v.damp
		}
	}
	return c, text * textScale, conf, textScale
}

func (v *Verifier) logit(x *Features) float64 {
	c, text, conf, _ := v.parts(x)
	return v.bias[c] + text + conf
}

func sigmoid(z float64) float64 {
	if z >= 0 {
		return 1 / (1 + math.Exp(-z))
	}
	e := math.Exp(z)
	return e / (1 + e)
}

// Explain returns the k features that moved the score most, largest
// magnitude first, in logit units measured against the training mean
// (positive pushes towards escalation). It allocates; keep it off the hot
// path or call it only for escalated answers.
func (v *Verifier) Explain(prompt *router.Input, a *Answer, k int) []router.Reason {
	if k <= 0 {
		return nil
	}
	var x Features
	Extract(prompt, a, &x)
	c, _, _, scale := v.parts(&x)
	lp := x[fHasLogprobs] == 1 && v.hasConf
	rs := make([]router.Reason, 0, NumFeatures+1)
	for i := range x {
		w := v.w[c][i] * scale
		if lp {
			w += v.conf[i]
		}
		if ct := w * v.z(&x, i, groups(&x)); math.Abs(ct) >= 0.005 {
			rs = append(rs, router.Reason{Feature: featureNames[i], Contribution: ct})
		}
	}
	if lp {
		// The confidence part at the training mean, against the average.
		if ct := v.confBias - v.confCenter; math.Abs(ct) >= 0.005 {
			rs = append(rs, router.Reason{Feature: "token_confidence", Contribution: ct})
		}
	}
	slices.SortStableFunc(rs, func(a, b router.Reason) int {
		return cmpAbs(b.Contribution, a.Contribution)
	})
	return rs[:min(k, len(rs))]
}

func cmpAbs(a, b float64) int {
	a, b = math.Abs(a), math.Abs(b)
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
