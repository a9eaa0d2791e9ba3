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
const ModelFormat = "cascade-verifier/1"

//go:embed models/default.json
var defaultJSON []byte

// Verifier scores answers. It is immutable once built and safe for
// concurrent use; Score does not allocate.
type Verifier struct {
	file modelFile
	// Folded for the hot path, per answer class: logit = bias + w·x. A class
	// without its own model uses the pooled one (classAll).
	w    [numClasses][NumFeatures]float64
	bias [numClasses]float64
	has  [numClasses]bool
}

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

// modelFile is the serialised model.
type modelFile struct {
	Format string `json:"format"`
	// Features names the features in order; Mean and Scale standardise them.
	Features []string  `json:"features"`
	Mean     []float64 `json:"mean"`
	Scale    []float64 `json:"scale"`
	// Models are logistic regressions over the standardised features: the
	// pooled one ("all", required) and one per answer class that had enough
	// training rows.
	Models []classModel `json:"models"`
	// Meta records how the model was trained (informational).
	Meta json.RawMessage `json:"meta,omitempty"`
}

type classModel struct {
	Class   string    `json:"class"`
	Rows    int       `json:"rows"`
	Weights []float64 `json:"weights"`
	Bias    float64   `json:"bias"`
}

var defaultVerifier = func() *Verifier {
	v, err := Parse(defaultJSON)
	if err != nil {
		panic("verify: built-in model is invalid: " + err.Error())
	}
	return v
}()

// Default returns the verifier built into the binary.
func Default() *Verifier { return defaultVerifier }

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
	for i := range NumFeatures {
		if !finite(f.Mean[i]) || !finite(f.Scale[i]) || f.Scale[i] <= 0 {
			return nil, fmt.Errorf("%w: feature %s: mean and scale must be finite, scale > 0", ErrModel, f.Features[i])
		}
	}
	v := &Verifier{file: f}
	for _, m := range f.Models {
		c := slices.Index(classNames[:], m.Class)
		if c < 0 || v.has[c] {
			return nil, fmt.Errorf("%w: unknown or repeated class %q", ErrModel, m.Class)
		}
		if len(m.Weights) != NumFeatures || !finite(m.Bias) {
			return nil, fmt.Errorf("%w: class %s: want %d weights and a finite bias", ErrModel, m.Class, NumFeatures)
		}
		v.has[c], v.bias[c] = true, m.Bias
		for i := range NumFeatures {
			if !finite(m.Weights[i]) {
				return nil, fmt.Errorf("%w: class %s: weight %s is not finite", ErrModel, m.Class, f.Features[i])
			}
			// w·(x−mean)/scale folded into one weight and the bias.
			v.w[c][i] = m.Weights[i] / f.Scale[i]
			v.bias[c] -= v.w[c][i] * f.Mean[i]
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

func (v *Verifier) logit(x *Features) float64 {
	c := v.class(x)
	z := v.bias[c]
	for i := range x {
		z += v.w[c][i] * float64(x[i])
	}
	return z
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
	m := &v.file.Models[0]
	for i := range v.file.Models {
		if v.file.Models[i].Class == classNames[v.class(&x)] {
			m = &v.file.Models[i]
		}
	}
	rs := make([]router.Reason, 0, NumFeatures)
	for i := range x {
		c := m.Weights[i] * (float64(x[i]) - v.file.Mean[i]) / v.file.Scale[i]
		if math.Abs(c) >= 0.005 {
			rs = append(rs, router.Reason{Feature: featureNames[i], Contribution: c})
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
