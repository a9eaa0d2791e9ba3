package router

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"sort"
)

// Example is one labelled prompt of the routing data: the outcome of a weak
// and a strong model on it (1 correct, 0 not).
type Example struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	Domain string `json:"domain"`
	Prompt string `json:"prompt"`
	Weak   int    `json:"weak"`
	Strong int    `json:"strong"`
}

// Input returns the router input for the example's prompt.
func (e *Example) Input() *Input {
	return &Input{Messages: []Message{{Role: "user", Content: e.Prompt}}}
}

// LoadExamples reads labelled JSONL files.
func LoadExamples(paths ...string) ([]Example, error) {
	return ReadLabelled(paths, func(e *Example) (weak, strong int, source *string) { return e.Weak, e.Strong, &e.Source })
}

// ReadLabelled reads JSONL files of labelled rows of type T, one JSON object
// a line (blank lines skipped). fields exposes a row's weak and strong
// labels, which must be 0 or 1, and its source, set to "unknown" when empty.
// Errors name the file and line.
func ReadLabelled[T any](paths []string, fields func(*T) (weak, strong int, source *string)) ([]T, error) {
	var out []T
	for _, p := range paths {
		if err := readLabelledFile(p, fields, &out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func readLabelledFile[T any](p string, fields func(*T) (int, int, *string), out *[]T) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var r T
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("%s:%d: %w", p, line, err)
		}
		weak, strong, src := fields(&r)
		if (weak != 0 && weak != 1) || (strong != 0 && strong != 1) {
			return fmt.Errorf("%s:%d: weak and strong must be 0 or 1", p, line)
		}
		if *src == "" {
			*src = "unknown"
		}
		*out = append(*out, r)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// IsValidation reports whether a prompt belongs to the held-out half for a
// seed. The split is by prompt text, so duplicates land on the same side.
func IsValidation(prompt string, seed int64) bool {
	return promptBit(prompt, seed, 0x5bd1e995)
}

func promptBit(prompt string, seed int64, salt uint64) bool {
	h := fnv.New64a()
	var b [8]byte
	for i := range b {
		b[i] = byte(uint64(seed) >> (8 * i))
	}
	h.Write(b[:])
	h.Write([]byte(prompt))
	return mix(h.Sum64(), salt)&1 == 1
}

// Split divides examples into training and validation halves by prompt.
func Split(ex []Example, seed int64) (train, val []Example) {
	for _, e := range ex {
		if IsValidation(e.Prompt, seed) {
			val = append(val, e)
		} else {
			train = append(train, e)
		}
	}
	return train, val
}

// Labels a model can be trained to predict.
const (
	// LabelGain: the expected gain of escalating, (strong − weak + 1) / 2,
	// as a soft target. It orders prompts by what escalation recovers.
	LabelGain = "gain"
	// LabelWeakWrong: the small model fails.
	LabelWeakWrong = "weak_wrong"
	// LabelEscalate: the small model fails and the large one succeeds.
	LabelEscalate = "escalate"
	// LabelHard is LabelGain except that prompts both models fail count as
	// partly worth escalating (hard prompts; a stronger large model may
	// solve them).
	LabelHard = "hard"
)

var hardBoth = 0.75

func label(kind string, e *Example) float64 {
	switch kind {
	case LabelWeakWrong:
		return float64(1 - e.Weak)
	case LabelEscalate:
		if e.Strong == 1 && e.Weak == 0 {
			return 1
		}
		return 0
	case LabelHard:
		if e.Strong == 0 && e.Weak == 0 {
			return hardBoth
		}
		return float64(e.Strong-e.Weak+1) / 2
	default:
		return float64(e.Strong-e.Weak+1) / 2
	}
}

// Score calibrations.
const (
	// CalibratePercentile maps scores to their percentile among the
	// training prompts.
	CalibratePercentile = "percentile"
	// CalibrateWeakWrong maps scores to the probability that the small
	// model fails, keeping their order.
	CalibrateWeakWrong = "weak_wrong"
	// CalibrateNone leaves the score as the training label's probability.
	CalibrateNone = "none"
)

// TrainOptions control Train. The zero value trains the default model.
type TrainOptions struct {
	Seed int64
	// Label is LabelGain (default), LabelWeakWrong or LabelEscalate.
	Label string
	// GramBits is log2 of the number of n-gram buckets; 0 means
	// DefaultGramBits, and a negative value trains without n-grams.
	GramBits int
	// L2Dense is the L2 penalty on the dense weights; L2Grams the one on the
	// n-gram weights when TopicLR is set. 0 means the defaults.
	L2Dense, L2Grams float64
	// Iters is the number of full-batch optimiser steps; 0 means 400.
	Iters int
	// BalanceSources weights each source equally in the loss.
	BalanceSources bool
	// Drop lists dense features left out (ablation).
	Drop []int
	// TopicSmoothing is the pseudo-count that shrinks each n-gram's subject
	// estimate towards the mean; 0 means DefaultTopicSmoothing.
	TopicSmoothing float64
	// TopicLR fits the subject estimate by L2-regularised logistic
	// regression instead of target encoding (slower; no better on the
	// routing data).
	TopicLR bool
	// Calibrate is CalibratePercentile (default), CalibrateWeakWrong or
	// CalibrateNone.
	Calibrate string
	// Unconstrained trains without the sign constraints of FeatureSigns.
	Unconstrained bool
	// Floor is the least weight, in standardised units, of the prior
	// difficulty cues (math, proof, reasoning, code, design, specialist
	// vocabulary, constraints) when sign constraints apply. 0 means
	// DefaultFloor; negative means 0.
	Floor float64
	// Signs overrides FeatureSigns (one entry per dense feature) when set.
	Signs []int8
	// Progress, when set, is called every few iterations.
	Progress func(iter int, loss float64)
}

// Defaults of TrainOptions.
const (
	// DefaultGramBits: no n-grams. With the sign-constrained dense
	// features they add nothing on held-out prompts (5-seed mean within
	// ±0.002 APGR) and they memorise the vocabulary of the training data;
	// --gram-bits 12 brings them back.
	DefaultGramBits = -1
	DefaultL2Dense  = 3e-2
	DefaultL2Grams  = 3e-3
	DefaultIters    = 400

	DefaultTopicSmoothing = 20
)

// DefaultFloor is TrainOptions.Floor's default.
var DefaultFloor = 0.015

type trainRow struct {
	d     Dense
	grams []GramHit // bucket, normalised weight; one entry per bucket
	y, sw float64
}

// Featurize computes the training rows of examples.
func featurize(ex []Example, bits int, kind string, balance bool) []trainRow {
	rows := make([]trainRow, len(ex))
	perSource := map[string]int{}
	for i := range ex {
		perSource[ex[i].Source]++
	}
	var hits []GramHit
	for i := range ex {
		r := &rows[i]
		in := ex[i].Input()
		if bits <= 0 {
			extract(in, &r.d, nil)
		} else {
			hits = hits[:0]
			g := gramSink{record: &hits, mask: 1<<bits - 1}
			extract(in, &r.d, &g)
			if g.count > 0 {
				r.grams = compactGrams(hits, 1/g.count)
			}
		}
		r.y = label(kind, &ex[i])
		r.sw = 1
		if balance {
			r.sw = float64(len(ex)) / float64(len(perSource)*perSource[ex[i].Source])
		}
	}
	return rows
}

func compactGrams(hits []GramHit, norm float64) []GramHit {
	sort.Slice(hits, func(a, b int) bool { return hits[a].Bucket < hits[b].Bucket })
	out := make([]GramHit, 0, len(hits))
	for _, h := range hits {
		if n := len(out); n > 0 && out[n-1].Bucket == h.Bucket {
			out[n-1].Weight += float32(float64(h.Weight) * norm)
			continue
		}
		out = append(out, GramHit{Bucket: h.Bucket, Weight: float32(float64(h.Weight) * norm)})
	}
	return out
}

// Train fits a logistic regression with L2 penalties by full-batch Adam from
// zero weights. It is deterministic: the same examples and options give the
// same model, bit for bit.
func Train(ex []Example, opt TrainOptions) (*Learned, error) {
	if len(ex) == 0 {
		return nil, errors.New("router: no training examples")
	}
	bits := opt.GramBits
	if bits == 0 {
		bits = DefaultGramBits
	}
	if bits > 24 {
		return nil, fmt.Errorf("router: gram bits %d > 24", bits)
	}
	if opt.Label == "" {
		opt.Label = LabelGain
	}
	switch opt.Label {
	case LabelGain, LabelWeakWrong, LabelEscalate, LabelHard:
	default:
		return nil, fmt.Errorf("router: unknown label %q", opt.Label)
	}
	l2d, l2g := opt.L2Dense, opt.L2Grams
	if l2d == 0 {
		l2d = DefaultL2Dense
	}
	if l2g == 0 {
		l2g = DefaultL2Grams
	}
	iters := opt.Iters
	if iters <= 0 {
		iters = DefaultIters
	}
	rows := featurize(ex, bits, opt.Label, opt.BalanceSources)

	// Standardise the dense features.
	var mean, scale [NumDense]float64
	var swSum float64
	for i := range rows {
		swSum += rows[i].sw
		for j := 0; j < NumDense; j++ {
			mean[j] += rows[i].sw * float64(rows[i].d[j])
		}
	}
	for j := range mean {
		mean[j] /= swSum
	}
	for i := range rows {
		for j := 0; j < NumDense; j++ {
			x := float64(rows[i].d[j]) - mean[j]
			scale[j] += rows[i].sw * x * x
		}
	}
	active := [NumDense]bool{}
	for j := range scale {
		scale[j] = math.Sqrt(scale[j] / swSum)
		active[j] = scale[j] > 1e-9
		if !active[j] {
			scale[j] = 1
		}
	}
	for _, j := range opt.Drop {
		if j >= 0 && j < NumDense {
			active[j] = false
		}
	}
	nD := NumDense + 1 // dense features plus the topic feature
	z := make([][]float64, len(rows))
	for i := range rows {
		z[i] = make([]float64, nD)
		for j := 0; j < NumDense; j++ {
			if active[j] {
				z[i][j] = (float64(rows[i].d[j]) - mean[j]) / scale[j]
			}
		}
	}
	nG := 0
	if bits > 0 {
		nG = 1 << bits
	}
	ys := make([]float64, len(rows))
	sws := make([]float64, len(rows))
	for i := range rows {
		ys[i], sws[i] = rows[i].y, rows[i].sw
	}

	// Stage 1 (topic): n-gram weights that predict the mean gain of the
	// prompt's subject (source/domain, smoothed towards the source mean).
	// Subject-level targets are far less noisy than per-prompt outcomes, so
	// the n-grams learn "which kind of question is this" rather than
	// memorising rows. Stage 2 uses the result as one feature; it is
	// cross-fitted (two folds by prompt) so its weight is not inflated by
	// training rows that stage 1 has already seen.
	var topicW []float64
	var topicMean, topicScale float64 = 0, 1
	useTopic := nG > 0
	if useTopic {
		prior := subjectPrior(ex, opt.Label)
		fold := make([]bool, len(ex))
		for i := range ex {
			fold[i] = promptBit(ex[i].Prompt, opt.Seed, 0xc2b2ae35)
		}
		topic := make([]float64, len(rows))
		for f := 0; f < 2; f++ {
			sub := make([]float64, len(rows))
			for i := range rows {
				if fold[i] == (f == 0) {
					sub[i] = sws[i]
				}
			}
			wg := topicFit(rows, prior, sub, nG, opt, l2g, iters)
			for i := range rows {
				if fold[i] != (f == 0) {
					topic[i] = gramDot(rows[i].grams, wg)
				}
			}
		}
		topicW = topicFit(rows, prior, sws, nG, opt, l2g, iters)
		var s1, s2 float64
		for i := range rows {
			s1 += sws[i] * topic[i]
		}
		topicMean = s1 / swSum
		for i := range rows {
			d := topic[i] - topicMean
			s2 += sws[i] * d * d
		}
		topicScale = math.Sqrt(s2 / swSum)
		if topicScale < 1e-9 {
			topicScale = 1
		}
		for i := range rows {
			z[i][NumDense] = (topic[i] - topicMean) / topicScale
		}
	}

	// Stage 2: logistic regression on the dense features and the topic,
	// with the weights projected onto their sign constraints.
	var signs []int8
	var floors []float64
	if !opt.Unconstrained {
		signs = make([]int8, nD)
		fs := opt.Signs
		if len(fs) != NumDense {
			fs = FeatureSigns()
		}
		copy(signs, fs)
		signs[NumDense] = 1 // the topic estimate points the right way by construction
		floor := opt.Floor
		if floor == 0 {
			floor = DefaultFloor
		}
		if floor > 0 {
			floors = make([]float64, nD)
			for _, j := range priorCues {
				if active[j] && signs[j] > 0 {
					floors[j] = floor
				}
			}
		}
	}
	bias, wd, _ := fitLR(rows, z, nD, ys, sws, l2d, 0, 0, iters, signs, floors, opt.Progress)
	for j := 0; j < NumDense; j++ {
		if !active[j] {
			wd[j] = 0
		}
	}
	loss := 0.0
	for i := range rows {
		s := bias
		for j := 0; j < nD; j++ {
			s += wd[j] * z[i][j]
		}
		loss += sws[i] * logLoss(ys[i], s)
	}
	loss /= swSum

	// Calibration keeps the order of the scores and sets their scale.
	// Percentile (default): the score is the logit's percentile among the
	// training prompts, so a threshold t escalates about 1−t of similar
	// traffic. Weak-wrong: a one-dimensional logistic fit (a·logit + b,
	// a > 0) maps the logit to the probability that the small model fails.
	calA, calB := 1.0, 0.0
	calibrate := opt.Calibrate
	if calibrate == "" {
		calibrate = CalibratePercentile
	}
	switch calibrate {
	case CalibratePercentile: // after the model is built
	case CalibrateWeakWrong:
		lz := make([][]float64, len(rows))
		yw := make([]float64, len(rows))
		for i := range rows {
			s := bias
			for j := 0; j < nD; j++ {
				s += wd[j] * z[i][j]
			}
			lz[i] = []float64{s}
			yw[i] = float64(1 - ex[i].Weak)
		}
		b, a, _ := fitLR(rows, lz, 1, yw, sws, 0, 0, 0, iters, nil, nil, nil)
		if a[0] > 0 {
			calA, calB = a[0], b
		}
	case CalibrateNone:
	default:
		return nil, fmt.Errorf("router: unknown calibration %q", opt.Calibrate)
	}
	for j := range wd {
		wd[j] *= calA
	}
	bias = calA*bias + calB

	f := modelFile{
		Format:   ModelFormat,
		Features: DenseNames(),
		Mean:     make([]float32, NumDense),
		Scale:    make([]float32, NumDense),
		Weights:  make([]float32, NumDense),
		Bias:     float32(bias - wd[NumDense]*topicMean/topicScale),
		GramBits: max(bits, 0),
	}
	for j := 0; j < NumDense; j++ {
		f.Mean[j] = float32(mean[j])
		f.Scale[j] = float32(scale[j])
		f.Weights[j] = float32(wd[j])
	}
	if useTopic {
		f.Grams = make([]float32, nG)
		for k := range f.Grams {
			f.Grams[k] = round32(wd[NumDense] / topicScale * topicW[k])
		}
	} else {
		f.GramBits = 0
	}
	meta := map[string]any{
		"seed": opt.Seed, "label": opt.Label, "gram_bits": f.GramBits,
		"l2_dense": l2d, "iters": iters, "examples": len(ex),
		"balance_sources": opt.BalanceSources, "final_loss": round32(loss),
		"sign_constraints": !opt.Unconstrained, "floor": floorMeta(opt),
		"topic_weight": round32(wd[NumDense]),
		"calibration":  calibrate, "calibration_scale": round32(calA), "calibration_shift": round32(calB),
	}
	switch {
	case !useTopic:
	case opt.TopicLR:
		meta["topic"], meta["l2_grams"] = "logistic", l2g
	default:
		smooth := opt.TopicSmoothing
		if smooth <= 0 {
			smooth = DefaultTopicSmoothing
		}
		meta["topic"], meta["topic_smoothing"] = "target_encoding", smooth
	}
	mb, _ := json.Marshal(meta)
	f.Meta = mb
	m, err := newLearned(f)
	if err != nil || calibrate != CalibratePercentile {
		return m, err
	}
	logits := make([]float64, len(ex))
	for i := range ex {
		var d Dense
		g := gramSink{weights: m.grams, mask: m.mask}
		extract(ex[i].Input(), &d, &g)
		logits[i] = m.logit(&d, &g)
	}
	sort.Float64s(logits)
	f.Percentiles = make([]float32, 99)
	for k := range f.Percentiles {
		// Linear interpolation between order statistics.
		pos := float64(k+1) / 100 * float64(len(logits)-1)
		lo := int(pos)
		hi := min(lo+1, len(logits)-1)
		f.Percentiles[k] = float32(logits[lo] + (pos-float64(lo))*(logits[hi]-logits[lo]))
	}
	if f.Percentiles[98] <= f.Percentiles[0] {
		return m, nil // degenerate: every prompt scores the same
	}
	return newLearned(f)
}

// round32 keeps five significant digits so model files stay small and
// diff-able.
func round32(x float64) float32 {
	if x == 0 {
		return 0
	}
	p := math.Pow(10, 4-math.Floor(math.Log10(math.Abs(x))))
	return float32(math.Round(x*p) / p)
}

func logLoss(y, s float64) float64 {
	// −[y log σ(s) + (1−y) log(1−σ(s))], stable form.
	return math.Max(s, 0) - y*s + math.Log1p(math.Exp(-math.Abs(s)))
}

// SetMeta replaces the model's training metadata.
func (m *Learned) SetMeta(meta any) error {
	b, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	m.file.Meta = b
	return nil
}

// subjectPrior returns, per example, the label mean of its subject
// (source/domain) with additive smoothing towards the source mean.
func subjectPrior(ex []Example, kind string) []float64 {
	const k = 10.0
	type acc struct{ sum, n float64 }
	src := map[string]*acc{}
	sub := map[string]*acc{}
	get := func(m map[string]*acc, key string) *acc {
		a := m[key]
		if a == nil {
			a = &acc{}
			m[key] = a
		}
		return a
	}
	for i := range ex {
		y := label(kind, &ex[i])
		a := get(src, ex[i].Source)
		a.sum, a.n = a.sum+y, a.n+1
		b := get(sub, ex[i].Source+"/"+ex[i].Domain)
		b.sum, b.n = b.sum+y, b.n+1
	}
	out := make([]float64, len(ex))
	for i := range ex {
		a := src[ex[i].Source]
		b := sub[ex[i].Source+"/"+ex[i].Domain]
		out[i] = (b.sum + k*a.sum/a.n) / (b.n + k)
	}
	return out
}

func gramDot(g []GramHit, w []float64) float64 {
	var s float64
	for _, h := range g {
		s += w[h.Bucket] * float64(h.Weight)
	}
	return s
}

// fitLR minimises the weighted logistic loss plus L2 penalties by
// full-batch Adam from zero (bias from the label's log-odds). z holds nD
// dense columns per row (may be nil); nG > 0 adds the rows' n-grams.
// signs, when non-nil, holds a sign constraint per dense column (+1: ≥ 0,
// −1: ≤ 0, 0: free) enforced by projection after every step; floors, when
// non-nil, raise the bound of +1 columns from 0 to floors[j].
func fitLR(rows []trainRow, z [][]float64, nD int, y, sw []float64, l2d, l2g float64, nG, iters int, signs []int8, floors []float64, progress func(int, float64)) (bias float64, wd, wg []float64) {
	const (
		lr    = 0.05
		beta1 = 0.9
		beta2 = 0.999
		eps   = 1e-8
	)
	np := 1 + nD + nG
	w := make([]float64, np)
	grad := make([]float64, np)
	m1 := make([]float64, np)
	m2 := make([]float64, np)
	var ySum, swSum float64
	for i := range rows {
		ySum += sw[i] * y[i]
		swSum += sw[i]
	}
	if swSum == 0 {
		return 0, w[1 : 1+nD], w[1+nD:]
	}
	p0 := math.Min(math.Max(ySum/swSum, 1e-3), 1-1e-3)
	w[0] = math.Log(p0 / (1 - p0))
	for it := 1; it <= iters; it++ {
		clear(grad)
		var loss float64
		for i := range rows {
			if sw[i] == 0 {
				continue
			}
			s := w[0]
			for j := 0; j < nD; j++ {
				s += w[1+j] * z[i][j]
			}
			if nG > 0 {
				for _, h := range rows[i].grams {
					s += w[1+nD+int(h.Bucket)] * float64(h.Weight)
				}
			}
			loss += sw[i] * logLoss(y[i], s)
			e := sw[i] * (sigmoid(s) - y[i])
			grad[0] += e
			for j := 0; j < nD; j++ {
				grad[1+j] += e * z[i][j]
			}
			if nG > 0 {
				for _, h := range rows[i].grams {
					grad[1+nD+int(h.Bucket)] += e * float64(h.Weight)
				}
			}
		}
		loss /= swSum
		for k := range grad {
			grad[k] /= swSum
		}
		for k := 1; k < np; k++ {
			l2 := l2d
			if k >= 1+nD {
				l2 = l2g
			}
			grad[k] += l2 * w[k]
			loss += 0.5 * l2 * w[k] * w[k]
		}
		c1 := 1 - math.Pow(beta1, float64(it))
		c2 := 1 - math.Pow(beta2, float64(it))
		for k := range w {
			m1[k] = beta1*m1[k] + (1-beta1)*grad[k]
			m2[k] = beta2*m2[k] + (1-beta2)*grad[k]*grad[k]
			w[k] -= lr * (m1[k] / c1) / (math.Sqrt(m2[k]/c2) + eps)
		}
		for j, sg := range signs {
			lo := 0.0
			if floors != nil {
				lo = floors[j]
			}
			if (sg > 0 && w[1+j] < lo) || (sg < 0 && w[1+j] > 0) {
				w[1+j] = lo
			}
		}
		if progress != nil && (it%50 == 0 || it == iters) {
			progress(it, loss)
		}
	}
	return w[0], w[1 : 1+nD], w[1+nD:]
}

// fitTopic estimates, for each n-gram bucket, how far the subjects of the
// prompts containing it lie from the mean (a smoothed target encoding):
// over the prompts containing bucket b, w[b] = Σ (prior − mean) / (count + k).
// A prompt's topic score is then the mean of its n-grams' estimates.
func fitTopic(rows []trainRow, prior, sw []float64, nG int, k float64) []float64 {
	if k <= 0 {
		k = DefaultTopicSmoothing
	}
	var m, n float64
	for i := range rows {
		m += sw[i] * prior[i]
		n += sw[i]
	}
	if n == 0 {
		return make([]float64, nG)
	}
	m /= n
	num := make([]float64, nG)
	den := make([]float64, nG)
	for i := range rows {
		if sw[i] == 0 {
			continue
		}
		for _, h := range rows[i].grams {
			num[h.Bucket] += sw[i] * (prior[i] - m)
			den[h.Bucket] += sw[i]
		}
	}
	for b := range num {
		num[b] /= den[b] + k
	}
	return num
}

func topicFit(rows []trainRow, prior, sw []float64, nG int, opt TrainOptions, l2g float64, iters int) []float64 {
	if opt.TopicLR {
		_, _, wg := fitLR(rows, nil, 0, prior, sw, 0, l2g, nG, iters, nil, nil, nil)
		return wg
	}
	return fitTopic(rows, prior, sw, nG, opt.TopicSmoothing)
}

func floorMeta(opt TrainOptions) float64 {
	switch {
	case opt.Unconstrained || opt.Floor < 0:
		return 0
	case opt.Floor == 0:
		return DefaultFloor
	}
	return opt.Floor
}
