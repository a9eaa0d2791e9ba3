package router

import (
	"cmp"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/cascade-gateway/cascade/config"
)

// ModelFormat identifies the model file format written by cascade train.
const ModelFormat = "cascade-router/1"

//go:embed models/default.json
var defaultModelJSON []byte

// Learned is a logistic-regression scorer over the dense features and hashed
// word n-grams of a prompt. It is immutable once loaded and safe for
// concurrent use; Score does not allocate.
type Learned struct {
	file modelFile

	// Folded for the hot path: score = sigmoid(bias + w·dense + ngrams).
	w    Dense
	bias float64
	// grams are the n-gram weights; len(grams) is a power of two.
	grams []float32
	mask  uint32
}

// modelFile is the serialised model.
type modelFile struct {
	Format string `json:"format"`
	// Features names the dense features in order; Mean and Scale standardise
	// them and Weights apply to the standardised values.
	Features []string  `json:"features"`
	Mean     []float32 `json:"mean"`
	Scale    []float32 `json:"scale"`
	Weights  []float32 `json:"weights"`
	Bias     float32   `json:"bias"`
	// GramBits: n-grams are hashed into 2^GramBits buckets; Grams holds their
	// weights (empty when the model uses no n-grams).
	GramBits int       `json:"gram_bits"`
	Grams    []float32 `json:"grams,omitempty"`
	// Percentiles, when present, map the model's logit to its percentile
	// among the training prompts: Percentiles[k-1] is the logit at the k-th
	// percentile, k = 1..99, ascending. The score is then the percentile (a
	// threshold t escalates about 1−t of traffic like the training data);
	// without them the score is the sigmoid of the logit.
	Percentiles []float32 `json:"percentiles,omitempty"`
	// Meta records how the model was trained (informational).
	Meta json.RawMessage `json:"meta,omitempty"`
}

var _ Scorer = (*Learned)(nil)

// DefaultModel returns the model built into the binary.
func DefaultModel() *Learned {
	defaultOnce()
	return defaultModel
}

var denseNames = DenseNames()

var (
	defaultModel *Learned
	defaultErr   error
)

func defaultOnce() {
	if defaultModel == nil && defaultErr == nil {
		defaultModel, defaultErr = ParseModel(defaultModelJSON)
		if defaultErr != nil {
			panic("router: built-in model is invalid: " + defaultErr.Error())
		}
	}
}

func init() { defaultOnce() }

// LoadModel reads a model file written by cascade train.
func LoadModel(path string) (*Learned, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("router: model: %w", err)
	}
	m, err := ParseModel(b)
	if err != nil {
		return nil, fmt.Errorf("router: model %s: %w", path, err)
	}
	return m, nil
}

// ParseModel decodes a serialised model.
func ParseModel(b []byte) (*Learned, error) {
	var f modelFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	return newLearned(f)
}

func newLearned(f modelFile) (*Learned, error) {
	if f.Format != ModelFormat {
		return nil, fmt.Errorf("format %q, want %q", f.Format, ModelFormat)
	}
	names := DenseNames()
	if len(f.Features) != len(names) {
		return nil, fmt.Errorf("model has %d dense features, this build has %d", len(f.Features), len(names))
	}
	for i := range names {
		if f.Features[i] != names[i] {
			return nil, fmt.Errorf("feature %d is %q, this build has %q", i, f.Features[i], names[i])
		}
	}
	if len(f.Mean) != NumDense || len(f.Scale) != NumDense || len(f.Weights) != NumDense {
		return nil, errors.New("mean, scale and weights must each have one value per feature")
	}
	if f.GramBits < 0 || f.GramBits > 24 {
		return nil, fmt.Errorf("gram_bits %d out of range [0, 24]", f.GramBits)
	}
	if len(f.Grams) != 0 && len(f.Grams) != 1<<f.GramBits {
		return nil, fmt.Errorf("grams has %d weights, want %d", len(f.Grams), 1<<f.GramBits)
	}
	m := &Learned{file: f, bias: float64(f.Bias)}
	for i := 0; i < NumDense; i++ {
		sc := f.Scale[i]
		if !finite32(sc) || !finite32(f.Mean[i]) || !finite32(f.Weights[i]) {
			return nil, fmt.Errorf("feature %s: non-finite value", names[i])
		}
		if sc <= 0 {
			return nil, fmt.Errorf("feature %s: scale must be positive", names[i])
		}
		m.w[i] = f.Weights[i] / sc
		m.bias -= float64(f.Weights[i]) * float64(f.Mean[i]) / float64(sc)
	}
	if !finite32(f.Bias) {
		return nil, errors.New("non-finite bias")
	}
	for _, g := range f.Grams {
		if !finite32(g) {
			return nil, errors.New("non-finite n-gram weight")
		}
	}
	if n := len(f.Percentiles); n != 0 {
		if n != 99 {
			return nil, fmt.Errorf("percentiles has %d values, want 99", n)
		}
		for k, q := range f.Percentiles {
			if !finite32(q) || (k > 0 && q < f.Percentiles[k-1]) {
				return nil, errors.New("percentiles must be finite and ascending")
			}
		}
		if f.Percentiles[98] <= f.Percentiles[0] {
			return nil, errors.New("percentiles must not all be equal")
		}
	}
	m.grams = f.Grams
	if len(m.grams) == 0 {
		m.grams = make([]float32, 1)
		m.mask = 0
	} else {
		m.mask = uint32(len(m.grams) - 1)
	}
	return m, nil
}

func finite32(x float32) bool {
	f := float64(x)
	return !math.IsNaN(f) && !math.IsInf(f, 0)
}

// Marshal serialises the model in the format ParseModel reads.
func (m *Learned) Marshal() ([]byte, error) {
	return json.Marshal(&m.file)
}

// Save writes the model to path.
func (m *Learned) Save(path string) error {
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Meta returns the training metadata stored with the model.
func (m *Learned) Meta() json.RawMessage { return m.file.Meta }

// UsesGrams reports whether the model has n-gram weights.
func (m *Learned) UsesGrams() bool { return len(m.file.Grams) > 0 }

// Score implements Scorer: the probability-like need for the large model.
func (m *Learned) Score(in *Input) float64 {
	var d Dense
	if len(m.file.Grams) == 0 {
		// No n-gram weights: skip hashing n-grams altogether.
		extract(in, &d, nil)
		return m.fromLogit(m.logit(&d, nil))
	}
	g := gramSink{weights: m.grams, mask: m.mask}
	extract(in, &d, &g)
	return m.fromLogit(m.logit(&d, &g))
}

// fromLogit maps a logit to the score: its percentile among the training
// prompts (interpolated linearly between percentiles, with logistic tails
// below the 1st and above the 99th so the order is kept everywhere), or the
// sigmoid when the model has no percentiles.
func (m *Learned) fromLogit(z float64) float64 {
	q := m.file.Percentiles
	if len(q) == 0 {
		return sigmoid(z)
	}
	lo, hi := float64(q[0]), float64(q[len(q)-1])
	tail := hi - lo
	switch {
	case z != z:
		return 0.5
	case z <= lo:
		return 0.02 * sigmoid((z-lo)/tail)
	case z >= hi:
		return 0.99 + 0.02*(sigmoid((z-hi)/tail)-0.5)
	}
	// k: the last knot at or below z (binary search; q[0] <= z < q[n-1]).
	k, j := 0, len(q)-1
	for j-k > 1 {
		mid := (k + j) / 2
		if float64(q[mid]) <= z {
			k = mid
		} else {
			j = mid
		}
	}
	a, b := float64(q[k]), float64(q[k+1])
	f := 0.5
	if b > a {
		f = (z - a) / (b - a)
	}
	return (float64(k+1) + f) / 100
}

func (m *Learned) logit(d *Dense, g *gramSink) float64 {
	z := m.bias
	for i := range d {
		z += float64(m.w[i]) * float64(d[i])
	}
	if g != nil && g.count > 0 {
		z += g.sum / g.count
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

// Reason is one feature's contribution to a score, in logit units: positive
// pushes towards the large model.
type Reason struct {
	Feature      string  `json:"feature"`
	Contribution float64 `json:"contribution"`
}

// Explain returns the k features that moved the score most, largest
// magnitude first. Dense features are measured against the training mean;
// n-grams are named "ngram:<text>". It allocates; keep it off the hot path.
func (m *Learned) Explain(in *Input, k int) []Reason {
	if k <= 0 {
		return nil
	}
	var d Dense
	size := 0
	for i := range in.Messages {
		size += len(in.Messages[i].Content)
	}
	hits := make([]GramHit, 0, min(size, maxScan)/3+8)
	g := gramSink{weights: m.grams, mask: m.mask, record: &hits}
	extract(in, &d, &g)
	names := denseNames
	rs := make([]Reason, 0, NumDense+k)
	for i := 0; i < NumDense; i++ {
		c := float64(m.file.Weights[i]) * (float64(d[i]) - float64(m.file.Mean[i])) / float64(m.file.Scale[i])
		if c != 0 {
			rs = append(rs, Reason{Feature: names[i], Contribution: c})
		}
	}
	if len(m.file.Grams) > 0 && g.count > 0 {
		// Aggregate occurrences of the same bucket; name only the winners.
		norm := 1 / g.count
		grams := make([]gramReason, 0, len(hits))
		at := make(map[uint32]int, len(hits))
		for i, h := range hits {
			c := float64(h.Weight) * float64(m.grams[h.Bucket]) * norm
			if j, ok := at[h.Bucket]; ok {
				grams[j].c += c
				continue
			}
			at[h.Bucket] = len(grams)
			grams = append(grams, gramReason{first: i, c: c})
		}
		for _, gr := range topK(grams, k, func(g gramReason) float64 { return g.c }) {
			if gr.c != 0 {
				rs = append(rs, Reason{Feature: "ngram:" + gramText(in, hits[gr.first]), Contribution: gr.c})
			}
		}
	}
	rs = topK(rs, k, func(r Reason) float64 { return r.Contribution })
	return rs
}

// topK reorders xs so that its first k elements are those of largest
// |value|, in decreasing order (earlier first among equals), and returns
// them.
func topK[T any](xs []T, k int, value func(T) float64) []T {
	if k >= len(xs) || k > 32 {
		slices.SortStableFunc(xs, func(a, b T) int { return cmp.Compare(math.Abs(value(b)), math.Abs(value(a))) })
		return xs[:min(k, len(xs))]
	}
	for i := 0; i < k; i++ {
		best := i
		for j := i + 1; j < len(xs); j++ {
			if math.Abs(value(xs[j])) > math.Abs(value(xs[best])) {
				best = j
			}
		}
		// Shift rather than swap to keep the rest in their original order.
		x := xs[best]
		copy(xs[i+1:best+1], xs[i:best])
		xs[i] = x
	}
	return xs[:k]
}

type gramReason struct {
	first int // index of the bucket's first hit
	c     float64
}

func gramText(in *Input, h GramHit) string {
	s := in.Messages[h.Msg].Content[h.Start:h.End]
	if len(s) > 64 {
		s = s[:64]
	}
	s = strings.ToLower(s)
	// Numbers are one token to the model; show them as such.
	var b strings.Builder
	num := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9' || (num && (c == '.' || c == ',')):
			if !num {
				b.WriteString("<num>")
				num = true
			}
		default:
			num = false
			if charClass[c] == cSpace || charClass[c] == cNewline {
				c = ' '
			}
			b.WriteByte(c)
		}
	}
	return b.String()
}

// NewScorer builds the scorer a routing config asks for: "length" is the
// length baseline; "" and "learned" load ModelFile, or the built-in model
// when no file is named.
func NewScorer(c config.Routing) (Scorer, error) {
	switch c.Scorer {
	case "length":
		return LengthScorer{}, nil
	case "", "learned":
		if c.ModelFile == "" {
			return DefaultModel(), nil
		}
		return LoadModel(c.ModelFile)
	default:
		return nil, fmt.Errorf("router: unknown scorer %q (want learned or length)", c.Scorer)
	}
}
