package verify

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"strings"

	"github.com/cascade-gateway/cascade/router"
)

// Offline training and evaluation of the verifier (cascade train/eval
// --answers). Nothing here runs on the request path.

// Alt is one entry of OpenAI's top_logprobs.
type Alt struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
}

// LabelledToken is one entry of OpenAI's chat logprobs.content.
type LabelledToken struct {
	Token       string  `json:"token"`
	Logprob     float64 `json:"logprob"`
	TopLogprobs []Alt   `json:"top_logprobs"`
}

// Small is the small model's answer in a data row.
type Small struct {
	Model string `json:"model,omitempty"`
	Text  string `json:"text"`
	// TopLogprobs are the alternatives of the first answer token.
	TopLogprobs []Alt `json:"top_logprobs,omitempty"`
	// Logprobs, when present, are every token's (OpenAI chat format).
	Logprobs     []LabelledToken `json:"logprobs,omitempty"`
	FinishReason string          `json:"finish_reason,omitempty"`
}

// Row is one labelled answer: the prompt, the small model's answer and
// whether the small (weak) and the large (strong) model were right.
type Row struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	Domain string `json:"domain,omitempty"`
	Prompt string `json:"prompt"`
	Weak   int    `json:"weak"`
	Strong int    `json:"strong"`
	Small  Small  `json:"small"`
}

// Input returns the router input of the row's prompt.
func (r *Row) Input() *router.Input {
	return &router.Input{Messages: []router.Message{{Role: "user", Content: PromptText(r.Prompt)}}}
}

// PromptText undoes the encoding of RouterBench's prompts, which are stored
// as Python list literals ("['line one\\nline two']") with escaped newlines
// and quotes; other prompts are returned unchanged.
func PromptText(p string) string {
	if len(p) < 4 || !(strings.HasPrefix(p, "['") && strings.HasSuffix(p, "']") ||
		strings.HasPrefix(p, `["`) && strings.HasSuffix(p, `"]`)) {
		return p
	}
	p = p[2 : len(p)-2]
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] != '\\' || i+1 == len(p) {
			b.WriteByte(p[i])
			continue
		}
		i++
		switch p[i] {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		default: // \' \" \\
			b.WriteByte(p[i])
		}
	}
	return b.String()
}

// Answer converts the row's answer to the verifier's input. A row with only
// the first token's top_logprobs becomes a one-token answer whose logprob is
// the alternative matching the text (else the best one).
func (s *Small) Answer() *Answer {
	a := &Answer{Text: s.Text, FinishReason: s.FinishReason}
	switch {
	case len(s.Logprobs) > 0:
		a.Tokens = make([]Token, len(s.Logprobs))
		for i, t := range s.Logprobs {
			a.Tokens[i] = Token{Logprob: float32(t.Logprob), Blank: isBlank(t.Token), Top: alts(t.TopLogprobs)}
		}
	case len(s.TopLogprobs) > 0:
		top := alts(s.TopLogprobs)
		best := slicesMax(top)
		lp := best
		for _, t := range s.TopLogprobs {
			if t.Token == s.Text || (len(s.Text) >= len(t.Token) && t.Token != "" && s.Text[:len(t.Token)] == t.Token) {
				lp = float32(t.Logprob)
				break
			}
		}
		a.Tokens = []Token{{Logprob: lp, Top: top}}
	}
	return a
}

func alts(xs []Alt) []float32 {
	if len(xs) == 0 {
		return nil
	}
	out := make([]float32, len(xs))
	for i, x := range xs {
		out[i] = float32(x.Logprob)
	}
	return out
}

func slicesMax(xs []float32) float32 {
	m := float32(math.Inf(-1))
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

func isBlank(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return false
		}
	}
	return true
}

// LoadRows reads labelled answer JSONL files.
func LoadRows(paths ...string) ([]Row, error) {
	return router.ReadLabelled(paths, func(r *Row) (weak, strong int, source *string) { return r.Weak, r.Strong, &r.Source })
}

// IsValidation reports whether a prompt falls in the held-out half for a
// seed: a hash of the prompt text, so duplicates stay on one side.
func IsValidation(prompt string, seed int64) bool { return promptHash(prompt, seed)&1 == 1 }

func promptHash(prompt string, seed int64) uint64 {
	h := fnv.New64a()
	var b [8]byte
	for i := range b {
		b[i] = byte(uint64(seed) >> (8 * i))
	}
	h.Write(b[:])
	h.Write([]byte(prompt))
	x := h.Sum64()
	// fnv's low bit is weak; fold the high bits in.
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return x
}

// Split divides rows into training and validation halves by prompt.
func Split(rows []Row, seed int64) (train, val []Row) {
	for _, r := range rows {
		if IsValidation(r.Prompt, seed) {
			val = append(val, r)
		} else {
			train = append(train, r)
		}
	}
	return train, val
}

// Labels the verifier can be trained to predict.
const (
	// LabelWeakWrong is 1 when the small model is wrong: the score is then
	// the probability of a wrong answer, and 0.5 the point where a wrong
	// answer becomes the likelier outcome.
	LabelWeakWrong = "weak_wrong"
	// LabelGain is the expected gain of escalating, (strong − weak + 1) / 2.
	// It ranks by what escalating recovers, but its scale sits around 0.5
	// whatever the answer, so a fixed threshold means little.
	LabelGain = "gain"
	// DefaultLabel is the built-in model's target.
	DefaultLabel = LabelWeakWrong
)

// TrainOptions configure Train. Zero values take the defaults.
type TrainOptions struct {
	// Label is the target: LabelWeakWrong (default) or LabelGain.
	Label string
	// L2 is the ridge penalty on the standardised weights, relative to the
	// (source-balanced) training weight of 1 per row. 0 means DefaultL2.
	L2 float64
	// Iters is the number of Newton steps. 0 means 25.
	Iters int
	// Drop lists features to leave out (weight forced to 0).
	Drop []int
	// MinClassRows is the least number of training rows an answer class
	// (and the confidence model) needs for its own weights; fewer and the
	// pooled model scores it. 0 means 150.
	MinClassRows int
	// LogprobTextWeight scales the text evidence of a class fitted without
	// logprobs when the answer carries them; no training data can set it
	// (no class has both kinds of answer). 0 means DefaultLogprobTextWeight;
	// a negative value means 0.
	LogprobTextWeight float64
}

// DefaultL2 is the ridge penalty, chosen by cross-validation inside the
// training half (cascade train --answers --cv).
const DefaultL2 = 10.0

// DefaultLogprobTextWeight halves the text evidence of a class fitted
// without logprobs when the answer has them: text and token confidence
// overlap (a hedging answer is also a low-probability one), and counting
// both in full would double the evidence.
const DefaultLogprobTextWeight = 0.5

// Train fits the verifier by L2-regularised logistic regression (Newton's
// method, deterministic) with every source weighted equally: first the
// confidence model on the rows with logprobs, then one text model per
// answer class with enough rows, and the pooled text model, preferably on
// rows without logprobs. A text model fitted on rows with logprobs takes
// the confidence part as a fixed offset: its weights are what the text adds.
func Train(rows []Row, opt TrainOptions) (*Verifier, error) {
	if len(rows) == 0 {
		return nil, errors.New("verify: no training rows")
	}
	if opt.L2 <= 0 {
		opt.L2 = DefaultL2
	}
	if opt.Iters <= 0 {
		opt.Iters = 25
	}
	if opt.MinClassRows <= 0 {
		opt.MinClassRows = 150
	}
	switch {
	case opt.LogprobTextWeight == 0:
		opt.LogprobTextWeight = DefaultLogprobTextWeight
	case opt.LogprobTextWeight < 0:
		opt.LogprobTextWeight = 0
	case opt.LogprobTextWeight > 1:
		opt.LogprobTextWeight = 1
	}
	lab := opt.Label
	if lab == "" {
		lab = DefaultLabel
	}
	if lab != LabelGain && lab != LabelWeakWrong {
		return nil, fmt.Errorf("verify: unknown label %q", lab)
	}
	X := FeatureMatrix(rows)
	n, d := len(rows), NumFeatures
	y := make([]float64, n)
	var lp, text []int // rows with and without logprobs
	for i, r := range rows {
		if lab == LabelGain {
			y[i] = float64(r.Strong-r.Weak+1) / 2
		} else {
			y[i] = float64(1 - r.Weak)
		}
		if X[i][fHasLogprobs] == 1 {
			lp = append(lp, i)
		} else {
			text = append(text, i)
		}
	}
	// Standardise with the source-weighted mean and deviation: the token
	// features over the rows that have them, the rest over all rows.
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	mean, scale := make([]float64, d), make([]float64, d)
	drop := make([]bool, d)
	for _, j := range opt.Drop {
		if j >= 0 && j < d {
			drop[j] = true
		}
	}
	byGroup := map[int][]int{}
	for i := range n {
		gs := groups(&X[i])
		for g := range 8 {
			if gs&(1<<g) != 0 {
				byGroup[g] = append(byGroup[g], i)
			}
		}
	}
	for j := range d {
		idx := all
		switch g := groupOf(j); {
		case isConfidence(j) || j == fMinNLL:
			idx = lp
		case j == fFmtProse:
			// Prose is the format of what fits no other: its own
			// intercept needs the rows a class needs.
			if len(byGroup[groupProse]) < opt.MinClassRows {
				drop[j] = true
			}
		case j == fFmtChoice || j == fFmtMath || j == fFmtCode:
			// One-hots: standardised over all rows, they shift the
			// intercept of their own format.
		case g != groupAny:
			idx = byGroup[g] // centred on the answers it describes
		}
		mean[j], scale[j] = moments(X, rows, idx, j)
		if scale[j] < 1e-6 {
			scale[j], drop[j] = 1, true
		}
		mean[j], scale[j] = round6(mean[j]), round6(scale[j])
	}
	Z := make([][]float64, n)
	for i := range n {
		z := make([]float64, d)
		gs := groups(&X[i])
		for j := range d {
			if gs&(1<<featureGroup[j]) == 0 {
				continue
			}
			if !drop[j] {
				z[j] = min(max((float64(X[i][j])-mean[j])/scale[j], -zClip), zClip)
			}
		}
		Z[i] = z
	}
	f := modelFile{
		Format:            ModelFormat,
		Features:          FeatureNames(),
		Mean:              mean,
		Scale:             scale,
		LogprobTextWeight: opt.LogprobTextWeight,
	}
	offset := make([]float64, n)
	if len(lp) >= opt.MinClassRows {
		// Two stages: the chosen tokens' probabilities first, then what
		// the alternatives add to them. How many alternatives a backend
		// returns varies (top_logprobs 0 to 20), and the statistics of
		// the alternatives vary with it: fitted together with the chosen
		// tokens' on one-token answers, where both say nearly the same,
		// they would take the chosen tokens' weight, and a backend that
		// returns fewer alternatives would look confident.
		beta, err := fit(Z, y, rows, lp, nil, func(j int) bool { return isConfidence(j) && !isAlternatives(j) && !drop[j] }, confidenceSign, opt)
		if err != nil {
			return nil, err
		}
		first := make([]float64, n)
		for _, i := range lp {
			first[i] = beta[d]
			for j := range d {
				first[i] += beta[j] * Z[i][j]
			}
		}
		alt, err := fit(Z, y, rows, lp, first, func(j int) bool { return isAlternatives(j) && !drop[j] }, confidenceSign, opt)
		if err != nil {
			return nil, err
		}
		c := &confModel{Rows: len(lp), Weights: make([]float64, d), Bias: round6(beta[d] + alt[d])}
		for j := range c.Weights {
			c.Weights[j] = round6(beta[j] + alt[j])
		}
		// Center: the logit of the mean risk of the rows with logprobs.
		var sy, sw float64
		w := SourceWeights(subset(rows, lp))
		for k, i := range lp {
			sy += w[k] * y[i]
			sw += w[k]
		}
		p := min(max(sy/sw, 1e-3), 1-1e-3)
		c.Center = round6(math.Log(p / (1 - p)))
		f.Confidence = c
		for _, i := range lp {
			o := c.Bias - c.Center
			for j, wj := range c.Weights {
				o += wj * Z[i][j]
			}
			offset[i] = o
		}
	}
	isTextFeature := func(j int) bool { return isText(j) && !drop[j] }
	// The pooled model, then one per class with enough rows.
	for c := range numClasses {
		var idx []int
		switch {
		case c != classAll:
			for i := range n {
				if classOf(&X[i]) == c {
					idx = append(idx, i)
				}
			}
			if len(idx) < opt.MinClassRows {
				continue
			}
		case len(text) >= opt.MinClassRows:
			idx = text
		default:
			idx = all
		}
		beta, err := fit(Z, y, rows, idx, offset, isTextFeature, anySign, opt)
		if err != nil {
			return nil, err
		}
		m := classModel{Class: classNames[c], Rows: len(idx), Weights: make([]float64, d), Bias: round6(beta[d])}
		for j := range d {
			m.Weights[j] = round6(beta[j])
		}
		for _, i := range idx {
			if X[i][fHasLogprobs] == 1 && f.Confidence != nil {
				m.Logprobs = true
			}
		}
		f.Models = append(f.Models, m)
	}
	meta, _ := json.Marshal(map[string]any{"label": lab, "l2": opt.L2, "rows": n})
	f.Meta = meta
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	return Parse(b)
}

// moments returns the source-weighted mean and deviation of feature j over
// the rows at idx (0 and 0 for none).
func moments(X []Features, rows []Row, idx []int, j int) (mean, dev float64) {
	if len(idx) == 0 {
		return 0, 0
	}
	w := SourceWeights(subset(rows, idx))
	var W float64
	for k, i := range idx {
		W += w[k]
		mean += w[k] * float64(X[i][j])
	}
	mean /= W
	for k, i := range idx {
		dv := float64(X[i][j]) - mean
		dev += w[k] * dv * dv
	}
	return mean, math.Sqrt(dev / W)
}

func subset(rows []Row, idx []int) []Row {
	out := make([]Row, len(idx))
	for k, i := range idx {
		out[k] = rows[i]
	}
	return out
}

// fit fits a logistic regression on the rows at idx over the features use
// keeps, with the rows' sources weighted equally and offset (nil: none)
// added to each row's logit. While a weight comes out against the sign
// sign(j) gives its feature (0: any), the most contrary feature is left out
// and the rest refitted. It returns NumFeatures weights (0 for the features
// left out) and the bias last.
func fit(Z [][]float64, y []float64, rows []Row, idx []int, offset []float64, use func(int) bool, sign func(int) float64, opt TrainOptions) ([]float64, error) {
	w := SourceWeights(subset(rows, idx))
	offs, ys := make([]float64, len(idx)), make([]float64, len(idx))
	for k, i := range idx {
		ys[k] = y[i]
		if offset != nil {
			offs[k] = offset[i]
		}
	}
	keep := make([]bool, NumFeatures)
	for j := range keep {
		keep[j] = use(j)
	}
	for {
		var cols []int
		for j, ok := range keep {
			if ok {
				cols = append(cols, j)
			}
		}
		zs := make([][]float64, len(idx))
		for k, i := range idx {
			z := make([]float64, len(cols)+1)
			for c, j := range cols {
				z[c] = Z[i][j]
			}
			z[len(cols)] = 1 // bias
			zs[k] = z
		}
		beta, err := newton(zs, ys, w, offs, opt.L2, opt.Iters)
		if err != nil {
			return nil, err
		}
		worst, wc := -1, 0.0
		for c, j := range cols {
			if v := sign(j) * beta[c]; v < wc {
				worst, wc = j, v
			}
		}
		if worst >= 0 {
			keep[worst] = false
			continue
		}
		out := make([]float64, NumFeatures+1)
		for c, j := range cols {
			out[j] = beta[c]
		}
		out[NumFeatures] = beta[len(cols)]
		return out, nil
	}
}

// isAlternatives reports whether token feature j is computed from the
// alternatives (top_logprobs) rather than the chosen tokens alone.
func isAlternatives(j int) bool {
	switch j {
	case fFirstMargin, fFirstEntropy, fMeanEntropy, fMeanMargin:
		return true
	}
	return false
}

// confidenceSign is the direction in which each token-confidence feature
// may move the risk: less confidence never lowers it. Fitted on one-token
// answers, where the first token's and the answer's statistics coincide,
// an unconstrained fit trades correlated features against each other, and
// such a trade would not hold on long answers, where they differ.
func confidenceSign(j int) float64 {
	switch j {
	case fFirstMargin, fMeanMargin:
		return -1
	}
	return 1
}

func anySign(int) float64 { return 0 }

// newton fits weighted, L2-regularised logistic regression with soft labels
// y and a fixed offset per row by Newton's method; the last column of Z is
// the (unpenalised) bias.
func newton(Z [][]float64, y, w, offset []float64, l2 float64, iters int) ([]float64, error) {
	d := len(Z[0]) - 1
	beta := make([]float64, d+1)
	H := make([][]float64, d+1)
	for j := range H {
		H[j] = make([]float64, d+1)
	}
	g := make([]float64, d+1)
	for it := 0; it < iters; it++ {
		for j := range H {
			clear(H[j])
		}
		clear(g)
		for i := range Z {
			zb := offset[i]
			for j, v := range Z[i] {
				zb += v * beta[j]
			}
			p := sigmoid(zb)
			r, s := w[i]*(p-y[i]), w[i]*max(p*(1-p), 1e-6)
			for j, vj := range Z[i] {
				if vj == 0 {
					continue
				}
				g[j] += r * vj
				Hj := H[j]
				for k, vk := range Z[i][:j+1] {
					Hj[k] += s * vj * vk
				}
			}
		}
		for j := 0; j <= d; j++ {
			for k := 0; k < j; k++ {
				H[k][j] = H[j][k]
			}
			if j < d {
				g[j] += l2 * beta[j]
				H[j][j] += l2
			}
			H[j][j] += 1e-9
		}
		step, ok := solve(H, g)
		if !ok {
			return nil, errors.New("verify: training diverged (singular system)")
		}
		for j := range beta {
			beta[j] -= step[j]
		}
	}
	return beta, nil
}

func round6(x float64) float64 { return math.Round(x*1e6) / 1e6 }

// SetMeta replaces the model's training metadata.
func (v *Verifier) SetMeta(meta any) error {
	b, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	v.file.Meta = b
	return nil
}

// solve solves A x = b by Gaussian elimination with partial pivoting (A is
// small: one row per feature). A and b are left unchanged.
func solve(A [][]float64, b []float64) ([]float64, bool) {
	n := len(b)
	M := make([][]float64, n)
	for i := range M {
		M[i] = append(append(make([]float64, 0, n+1), A[i]...), b[i])
	}
	for c := 0; c < n; c++ {
		p := c
		for r := c + 1; r < n; r++ {
			if math.Abs(M[r][c]) > math.Abs(M[p][c]) {
				p = r
			}
		}
		if math.Abs(M[p][c]) < 1e-12 {
			return nil, false
		}
		M[c], M[p] = M[p], M[c]
		for r := c + 1; r < n; r++ {
			f := M[r][c] / M[c][c]
			for k := c; k <= n; k++ {
				M[r][k] -= f * M[c][k]
			}
		}
	}
	x := make([]float64, n)
	for r := n - 1; r >= 0; r-- {
		s := M[r][n]
		for k := r + 1; k < n; k++ {
			s -= M[r][k] * x[k]
		}
		x[r] = s / M[r][r]
	}
	return x, true
}

// FeatureMatrix extracts the features of every row.
func FeatureMatrix(rows []Row) []Features {
	X := make([]Features, len(rows))
	for i := range rows {
		Extract(rows[i].Input(), rows[i].Small.Answer(), &X[i])
	}
	return X
}

// SourceWeights gives every source the same total weight, rows within a
// source equal ones; the weights sum to len(rows).
func SourceWeights(rows []Row) []float64 {
	count := map[string]int{}
	for _, r := range rows {
		count[r.Source]++
	}
	w := make([]float64, len(rows))
	for i, r := range rows {
		w[i] = float64(len(rows)) / float64(len(count)*count[r.Source])
	}
	return w
}

// ScoreRows scores every row with v.
func ScoreRows(v *Verifier, rows []Row) []float64 {
	out := make([]float64, len(rows))
	for i := range rows {
		out[i] = v.Score(rows[i].Input(), rows[i].Small.Answer())
	}
	return out
}

// Outcomes returns the weak and strong columns of rows.
func Outcomes(rows []Row) (weak, strong []int) {
	weak, strong = make([]int, len(rows)), make([]int, len(rows))
	for i := range rows {
		weak[i], strong[i] = rows[i].Weak, rows[i].Strong
	}
	return weak, strong
}

// BySource groups rows by source, sources in first-seen order.
func BySource(rows []Row) (names []string, groups map[string][]Row) {
	groups = map[string][]Row{}
	for _, r := range rows {
		if _, ok := groups[r.Source]; !ok {
			names = append(names, r.Source)
		}
		groups[r.Source] = append(groups[r.Source], r)
	}
	return names, groups
}

// WeightedAPGR is router.Evaluate's APGR with weighted rows: the mixed pool,
// where each source has an equal share, uses SourceWeights. Rows with equal
// scores share the cut.
func WeightedAPGR(scores []float64, weak, strong []int, w []float64) float64 {
	q, base, top := WeightedCurve(scores, weak, strong, w, router.EvalPoints)
	if top == base {
		return 0
	}
	var auc float64
	for k := 1; k < len(q); k++ {
		auc += (q[k] + q[k-1]) / 2 / float64(len(q)-1)
	}
	return (auc - base) / (top - base)
}

// WeightedCurve returns the weighted quality at points evenly spaced shares
// of (weighted) strong calls, and the weak and strong qualities.
func WeightedCurve(scores []float64, weak, strong []int, w []float64, points int) (q []float64, weakQ, strongQ float64) {
	n := len(scores)
	order := make([]int, n)
	var W float64
	for i := range order {
		order[i] = i
		W += w[i]
		weakQ += w[i] * float64(weak[i])
		strongQ += w[i] * float64(strong[i])
	}
	if W == 0 {
		return make([]float64, points), 0, 0
	}
	sort.SliceStable(order, func(a, b int) bool { return scores[order[a]] > scores[order[b]] })
	q = make([]float64, points)
	for k := range points {
		m := float64(k) / float64(points-1) * W
		var gain, taken float64
		for i := 0; i < n && taken < m; {
			j := i
			var g, size float64
			for j < n && scores[order[j]] == scores[order[i]] {
				o := order[j]
				g += w[o] * float64(strong[o]-weak[o])
				size += w[o]
				j++
			}
			if taken+size <= m {
				gain += g
				taken += size
			} else {
				gain += g * (m - taken) / size
				taken = m
			}
			i = j
		}
		q[k] = (weakQ + gain) / W
	}
	return q, weakQ / W, strongQ / W
}
