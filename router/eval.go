package router

import (
	"math"
	"math/rand/v2"
	"sort"
)

// Routing quality, measured as RouteLLM does: sort prompts by score, send the
// top share x to the strong model and the rest to the weak one; quality(x) is
// the mean correctness of the model each prompt went to.
//
//	PGR(x)  = (quality(x) − weak) / (strong − weak)
//	APGR    = (AUC of quality over x in [0,1] − weak) / (strong − weak)
//	CPT(p)  = smallest x with PGR(x) = p, interpolated
//
// quality is taken at EvalPoints evenly spaced shares (0, 10%, ..., 100%) and
// interpolated linearly between them. Prompts with equal scores share the
// boundary: when a tie straddles the cut, each tied prompt goes to the strong
// model with the same fraction, so the result does not depend on input order.

// EvalPoints is the number of evaluation shares (0..100% in steps of 10).
const EvalPoints = 11

// Metrics summarises a router on a labelled set.
type Metrics struct {
	N int
	// Weak and Strong are the mean correctness of each model alone.
	Weak, Strong float64
	// Shares are the evaluated shares of strong calls; Quality and PGR the
	// values at each.
	Shares, Quality, PGR []float64
	APGR, CPT50, CPT80   float64
}

// QualityAt returns the quality when the top share x of prompts (by score)
// go to the strong model. Ties at the cut are split evenly.
func QualityAt(scores []float64, weak, strong []int, x float64) float64 {
	order := sortedByScore(scores)
	return qualityAt(order, scores, weak, strong, x)
}

func sortedByScore(scores []float64) []int {
	order := make([]int, len(scores))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return scores[order[a]] > scores[order[b]] })
	return order
}

func qualityAt(order []int, scores []float64, weak, strong []int, x float64) float64 {
	return qualityAtW(order, scores, weak, strong, nil, x)
}

// qualityAtW is qualityAt with a weight per prompt (nil: all 1); x is a
// share of the total weight.
func qualityAtW(order []int, scores []float64, weak, strong []int, weight []float64, x float64) float64 {
	n := len(order)
	if n == 0 {
		return 0
	}
	wt := func(k int) float64 {
		if weight == nil {
			return 1
		}
		return weight[k]
	}
	var base, total float64
	for k, w := range weak {
		base += wt(k) * float64(w)
		total += wt(k)
	}
	if total <= 0 {
		return 0
	}
	m := x * total // weight to route
	var gain float64
	taken := 0.0
	for i := 0; i < n && taken < m; {
		j := i
		var g, size float64
		for j < n && scores[order[j]] == scores[order[i]] {
			k := order[j]
			g += wt(k) * float64(strong[k]-weak[k])
			size += wt(k)
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
	return (base + gain) / total
}

// Evaluate computes the routing metrics of scores against outcomes.
func Evaluate(scores []float64, weak, strong []int) Metrics {
	return EvaluateWeighted(scores, weak, strong, nil)
}

// EvaluateWeighted is Evaluate with a weight per prompt (nil: all equal):
// shares, qualities and the weak and strong means are weighted.
func EvaluateWeighted(scores []float64, weak, strong []int, weight []float64) Metrics {
	n := len(scores)
	mt := Metrics{N: n}
	if n == 0 {
		return mt
	}
	var total float64
	for i := 0; i < n; i++ {
		w := 1.0
		if weight != nil {
			w = weight[i]
		}
		mt.Weak += w * float64(weak[i])
		mt.Strong += w * float64(strong[i])
		total += w
	}
	if total <= 0 {
		return Metrics{N: n}
	}
	mt.Weak /= total
	mt.Strong /= total
	order := sortedByScore(scores)
	gap := mt.Strong - mt.Weak
	mt.Shares = make([]float64, EvalPoints)
	mt.Quality = make([]float64, EvalPoints)
	mt.PGR = make([]float64, EvalPoints)
	for k := 0; k < EvalPoints; k++ {
		x := float64(k) / float64(EvalPoints-1)
		mt.Shares[k] = x
		mt.Quality[k] = qualityAtW(order, scores, weak, strong, weight, x)
		if gap != 0 {
			mt.PGR[k] = (mt.Quality[k] - mt.Weak) / gap
		}
	}
	var auc float64
	for k := 1; k < EvalPoints; k++ {
		auc += (mt.Quality[k] + mt.Quality[k-1]) / 2 * (mt.Shares[k] - mt.Shares[k-1])
	}
	if gap != 0 {
		mt.APGR = (auc - mt.Weak) / gap
	}
	mt.CPT50 = cpt(mt.Shares, mt.PGR, 0.5)
	mt.CPT80 = cpt(mt.Shares, mt.PGR, 0.8)
	return mt
}

// cpt returns the smallest share at which the interpolated PGR curve reaches
// p, or NaN if it never does.
func cpt(x, pgr []float64, p float64) float64 {
	if len(pgr) == 0 {
		return math.NaN()
	}
	if pgr[0] >= p {
		return x[0]
	}
	for k := 1; k < len(pgr); k++ {
		if pgr[k] >= p {
			d := pgr[k] - pgr[k-1]
			return x[k-1] + (p-pgr[k-1])/d*(x[k]-x[k-1])
		}
	}
	return math.NaN()
}

// RandomMetrics averages the metrics of reps seeded random orderings.
func RandomMetrics(weak, strong []int, seed uint64, reps int) Metrics {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	scores := make([]float64, len(weak))
	var acc Metrics
	for rep := 0; rep < reps; rep++ {
		for i := range scores {
			scores[i] = r.Float64()
		}
		m := Evaluate(scores, weak, strong)
		if rep == 0 {
			acc = m
			acc.Quality = append([]float64(nil), m.Quality...)
			acc.PGR = append([]float64(nil), m.PGR...)
			continue
		}
		acc.APGR += m.APGR
		acc.CPT50 += m.CPT50
		acc.CPT80 += m.CPT80
		for k := range m.Quality {
			acc.Quality[k] += m.Quality[k]
			acc.PGR[k] += m.PGR[k]
		}
	}
	if reps > 1 {
		f := float64(reps)
		acc.APGR /= f
		acc.CPT50 /= f
		acc.CPT80 /= f
		for k := range acc.Quality {
			acc.Quality[k] /= f
			acc.PGR[k] /= f
		}
	}
	return acc
}

// OracleScores orders prompts by what escalation actually gains: the best
// any router could do on this set.
func OracleScores(weak, strong []int) []float64 {
	s := make([]float64, len(weak))
	for i := range s {
		s[i] = float64(strong[i] - weak[i])
	}
	return s
}

// Outcomes returns the weak and strong correctness columns of examples.
func Outcomes(ex []Example) (weak, strong []int) {
	weak = make([]int, len(ex))
	strong = make([]int, len(ex))
	for i := range ex {
		weak[i], strong[i] = ex[i].Weak, ex[i].Strong
	}
	return weak, strong
}

// ScoreAll scores every example with s.
func ScoreAll(s Scorer, ex []Example) []float64 {
	out := make([]float64, len(ex))
	for i := range ex {
		out[i] = s.Score(ex[i].Input())
	}
	return out
}

// BySource groups examples by their source, in first-seen order.
func BySource(ex []Example) (names []string, groups map[string][]Example) {
	groups = map[string][]Example{}
	for _, e := range ex {
		if _, ok := groups[e.Source]; !ok {
			names = append(names, e.Source)
		}
		groups[e.Source] = append(groups[e.Source], e)
	}
	return names, groups
}

// AblationRow is the validation APGR per source with one feature group left
// out, averaged over the split seeds.
type AblationRow struct {
	Group string
	APGR  map[string]float64
}

// Ablation trains once with every feature and once per feature group left
// out ("ngrams" drops the hashed n-grams), for each seed's train/validation
// split, and returns the mean validation APGR per source (and, with several
// sources, on the mixed pool, under "mixed"). The first row,
// "all", is the full model.
func Ablation(ex []Example, seeds []int64, opt TrainOptions, progress func(done, total int)) ([]AblationRow, error) {
	groups := FeatureGroups()
	names := append([]string{"all", "ngrams"}, sortedKeys(groups)...)
	rows := make([]AblationRow, len(names), len(names)+1)
	total, done := len(names)*len(seeds), 0
	for i, name := range names {
		rows[i] = AblationRow{Group: name, APGR: map[string]float64{}}
		for _, seed := range seeds {
			o := opt
			o.Seed, o.Progress = seed, nil
			switch name {
			case "all":
			case "ngrams": // toggled: left out when the options use them, else added
				if o.GramBits > 0 || (o.GramBits == 0 && DefaultGramBits > 0) {
					o.GramBits = -1
				} else {
					o.GramBits = 12
				}
			default:
				o.Drop = append(append([]int(nil), opt.Drop...), groups[name]...)
			}
			tr, va := Split(ex, seed)
			m, err := Train(tr, o)
			if err != nil {
				return nil, err
			}
			srcs, bySrc := BySource(va)
			for _, src := range srcs {
				w, s := Outcomes(bySrc[src])
				rows[i].APGR[src] += Evaluate(ScoreAll(m, bySrc[src]), w, s).APGR / float64(len(seeds))
			}
			if len(srcs) > 1 {
				rows[i].APGR["mixed"] += EvaluateMixed(va, ScoreAll(m, va)).APGR / float64(len(seeds))
			}
			done++
			if progress != nil {
				progress(done, total)
			}
		}
	}
	base := AblationRow{Group: "score=length", APGR: map[string]float64{}}
	for _, seed := range seeds {
		_, va := Split(ex, seed)
		srcs, bySrc := BySource(va)
		for _, src := range srcs {
			w, s := Outcomes(bySrc[src])
			base.APGR[src] += Evaluate(ScoreAll(LengthScorer{Saturation: math.MaxInt}, bySrc[src]), w, s).APGR / float64(len(seeds))
		}
		if len(srcs) > 1 {
			base.APGR["mixed"] += EvaluateMixed(va, ScoreAll(LengthScorer{Saturation: math.MaxInt}, va)).APGR / float64(len(seeds))
		}
	}
	return append(rows, base), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// MixedWeights weights every example so that each source has the same total
// weight: the mixed pool, an equal share of each set, pooled.
func MixedWeights(ex []Example) []float64 {
	n := map[string]int{}
	for i := range ex {
		n[ex[i].Source]++
	}
	w := make([]float64, len(ex))
	for i := range ex {
		w[i] = 1 / float64(len(n)*n[ex[i].Source])
	}
	return w
}

// EvaluateMixed computes the metrics of scores (one per example) on the
// mixed pool: every source weighs the same, all are ranked together.
func EvaluateMixed(ex []Example, scores []float64) Metrics {
	w, s := Outcomes(ex)
	return EvaluateWeighted(scores, w, s, MixedWeights(ex))
}

// RandomMixed averages the mixed-pool metrics of reps seeded random
// orderings.
func RandomMixed(ex []Example, seed uint64, reps int) Metrics {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	scores := make([]float64, len(ex))
	var acc Metrics
	for rep := 0; rep < reps; rep++ {
		for i := range scores {
			scores[i] = r.Float64()
		}
		m := EvaluateMixed(ex, scores)
		acc.N, acc.Weak, acc.Strong, acc.Shares = m.N, m.Weak, m.Strong, m.Shares
		acc.APGR += m.APGR / float64(reps)
		acc.CPT50 += m.CPT50 / float64(reps)
		acc.CPT80 += m.CPT80 / float64(reps)
		if acc.Quality == nil {
			acc.Quality, acc.PGR = make([]float64, len(m.Quality)), make([]float64, len(m.PGR))
		}
		for k := range m.Quality {
			acc.Quality[k] += m.Quality[k] / float64(reps)
			acc.PGR[k] += m.PGR[k] / float64(reps)
		}
	}
	return acc
}

// SourcePrior scores every example by the mean gain of escalating in its
// source, known in hindsight from the examples themselves: what knowing
// only which set a prompt came from is worth on the mixed pool.
func SourcePrior(ex []Example) []float64 {
	sum, n := map[string]float64{}, map[string]float64{}
	for i := range ex {
		sum[ex[i].Source] += float64(ex[i].Strong - ex[i].Weak)
		n[ex[i].Source]++
	}
	s := make([]float64, len(ex))
	for i := range ex {
		s[i] = sum[ex[i].Source] / n[ex[i].Source]
	}
	return s
}
