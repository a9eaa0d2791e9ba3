package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/router"
	"github.com/cascade-gateway/cascade/router/verify"
)

// The answer verifier's offline tools: cascade train/eval/score --answers.

// hasAnswers reports whether args ask for the answer verifier.
func hasAnswers(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		name := strings.TrimLeft(a, "-")
		if strings.HasPrefix(a, "-") && (name == "answers" || strings.HasPrefix(name, "answers=")) {
			return true
		}
	}
	return false
}

func runTrainAnswers(args []string) error {
	fs := flag.NewFlagSet("train --answers", flag.ContinueOnError)
	var data stringsFlag
	fs.Var(&data, "answers", "labelled answers JSONL (repeatable): {id, source, prompt, weak, strong, small: {text, top_logprobs, finish_reason}}")
	out := fs.String("out", "verifier.json", "where to write the verifier model")
	seed := fs.Int64("seed", 1, "seed of the train/validation split (by prompt hash)")
	label := fs.String("label", verify.DefaultLabel, "training target: weak_wrong (the score is the chance of a wrong answer) or gain")
	l2 := fs.Float64("l2", verify.DefaultL2, "ridge penalty on the standardised weights")
	all := fs.Bool("all", false, "train on every row (no validation half)")
	cv := fs.Int("cv", 0, "instead of training, cross-validate labels and penalties with this many folds inside the training half")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(data) == 0 {
		return errors.New("at least one --answers file is required")
	}
	rows, err := verify.LoadRows(data...)
	if err != nil {
		return err
	}
	train, val := verify.Split(rows, *seed)
	if *all {
		train, val = rows, nil
	}
	if *cv > 0 {
		return crossValidate(os.Stdout, train, *cv, *seed)
	}
	fmt.Fprintf(os.Stderr, "train: %d rows (%d training, %d validation)\n", len(rows), len(train), len(val))
	v, err := verify.Train(train, verify.TrainOptions{Label: *label, L2: *l2})
	if err != nil {
		return err
	}
	fmt.Printf("%-20s %-6s %6s %7s %7s %7s\n", "source", "split", "n", "APGR", "CPT50", "CPT80")
	rep := map[string]any{}
	for _, part := range []struct {
		name string
		rows []verify.Row
	}{{"train", train}, {"val", val}} {
		if len(part.rows) == 0 {
			continue
		}
		scores := verify.ScoreRows(v, part.rows)
		names, _ := verify.BySource(part.rows)
		for _, src := range names {
			idx := indicesOf(part.rows, src)
			mt := evalAt(scores, part.rows, idx)
			fmt.Printf("%-20s %-6s %6d %7.3f %6.1f%% %6.1f%%\n", src, part.name, mt.N, mt.APGR, 100*mt.CPT50, 100*mt.CPT80)
			rep[part.name+"/"+src] = map[string]float64{"apgr": round3(mt.APGR), "cpt50": round3(mt.CPT50), "cpt80": round3(mt.CPT80)}
		}
		w, s := verify.Outcomes(part.rows)
		mixed := verify.WeightedAPGR(scores, w, s, verify.SourceWeights(part.rows))
		fmt.Printf("%-20s %-6s %6d %7.3f\n", "mixed", part.name, len(part.rows), mixed)
		rep[part.name+"/mixed"] = map[string]float64{"apgr": round3(mixed)}
	}
	names := make([]string, len(data))
	for i, d := range data {
		names[i] = filepath.Base(d)
	}
	if err := v.SetMeta(map[string]any{
		"label": *label, "l2": *l2, "seed": *seed, "validation_split": !*all,
		"data": names, "rows": len(train), "metrics": rep,
	}); err != nil {
		return err
	}
	b, err := v.Marshal()
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "train: wrote %s\n", *out)
	return nil
}

// crossValidate reports the mean out-of-fold APGR per source and of the
// mixed pool for each label and penalty, folds by prompt hash: the choice
// of the defaults is made here, never on the validation half.
func crossValidate(w io.Writer, rows []verify.Row, k int, seed int64) error {
	srcs, _ := verify.BySource(rows)
	fmt.Fprintf(w, "%d-fold cross-validation inside the training half (%d rows); out-of-fold APGR\n%-11s %6s", k, len(rows), "label", "l2")
	for _, s := range srcs {
		fmt.Fprintf(w, " %10.10s", s)
	}
	fmt.Fprintf(w, " %10s\n", "mixed")
	fold := func(r *verify.Row) int { return int(foldHash(r.Prompt, seed) % uint64(k)) }
	for _, label := range []string{verify.LabelWeakWrong, verify.LabelGain} {
		for _, l2 := range []float64{0.3, 1, 3, 10, 30} {
			scores := make([]float64, len(rows))
			for f := 0; f < k; f++ {
				var tr []verify.Row
				for i := range rows {
					if fold(&rows[i]) != f {
						tr = append(tr, rows[i])
					}
				}
				v, err := verify.Train(tr, verify.TrainOptions{Label: label, L2: l2})
				if err != nil {
					return err
				}
				for i := range rows {
					if fold(&rows[i]) == f {
						scores[i] = v.Score(rows[i].Input(), rows[i].Small.Answer())
					}
				}
			}
			fmt.Fprintf(w, "%-11s %6.1f", label, l2)
			for _, s := range srcs {
				idx := indicesOf(rows, s)
				fmt.Fprintf(w, " %10.3f", evalAt(scores, rows, idx).APGR)
			}
			wk, st := verify.Outcomes(rows)
			fmt.Fprintf(w, " %10.3f\n", verify.WeightedAPGR(scores, wk, st, verify.SourceWeights(rows)))
		}
	}
	return nil
}

func foldHash(s string, seed int64) uint64 {
	h := uint64(1469598103934665603) ^ uint64(seed)*0x9e3779b97f4a7c15
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	return h ^ h>>32
}

func indicesOf(rows []verify.Row, src string) []int {
	var idx []int
	for i := range rows {
		if rows[i].Source == src {
			idx = append(idx, i)
		}
	}
	return idx
}

func pick(xs []float64, idx []int) []float64 {
	out := make([]float64, len(idx))
	for i, j := range idx {
		out[i] = xs[j]
	}
	return out
}

// evalAt evaluates the scores of the rows at idx.
func evalAt(scores []float64, rows []verify.Row, idx []int) router.Metrics {
	w, s := pickOutcomes(rows, idx)
	return router.Evaluate(pick(scores, idx), w, s)
}

func pickOutcomes(rows []verify.Row, idx []int) (weak, strong []int) {
	weak, strong = make([]int, len(idx)), make([]int, len(idx))
	for i, j := range idx {
		weak[i], strong[i] = rows[j].Weak, rows[j].Strong
	}
	return weak, strong
}

// ---- eval ----

// scorerColumn is one way of ordering the rows.
type scorerColumn struct {
	name, color string
	dash        bool
	scores      []float64
	// logprobsOnly: defined only where the rows carry logprobs.
	logprobsOnly bool
}

func runEvalAnswers(args []string) error {
	fs := flag.NewFlagSet("eval --answers", flag.ContinueOnError)
	var data stringsFlag
	fs.Var(&data, "answers", "labelled answers JSONL (repeatable)")
	model := fs.String("model", "", "verifier model file (default: the built-in one)")
	promptModel := fs.String("prompt-model", "", "prompt scorer model file (default: the built-in one)")
	cfgPath := fs.String("config", "config/example.yaml", "config whose tiers price the cost-adjusted curve (first tier small, last large)")
	plot := fs.String("plot", "", "write SVG plots here: quality vs share of escalations, and FILE without .svg + -cost.svg for quality vs cost")
	seed := fs.Int64("seed", 1, "seed of the train/validation split; must match training")
	all := fs.Bool("all", false, "evaluate on every row, not only the validation half")
	signals := fs.Bool("signals", false, "also report each single feature's APGR (its direction taken from the training half)")
	high := fs.Float64("hybrid-high", 0.10, "hybrid: share of requests with the highest prompt scores sent straight to the large tier")
	low := fs.Float64("hybrid-low", 0.30, "hybrid: share with the lowest prompt scores served by the small tier unchecked")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(data) == 0 {
		return errors.New("at least one --answers file is required")
	}
	v := verify.Default()
	if *model != "" {
		var err error
		if v, err = verify.Load(*model); err != nil {
			return err
		}
	}
	pm := router.DefaultModel()
	if *promptModel != "" {
		var err error
		if pm, err = router.LoadModel(*promptModel); err != nil {
			return err
		}
	}
	cfg, err := config.LoadFile(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w (the cost curve prices tiers from --config)", err)
	}
	if len(cfg.Tiers) < 2 {
		return fmt.Errorf("%s: the cost curve needs at least two tiers", *cfgPath)
	}
	pricer := costing.NewPricer(cfg.Tiers)
	small, _ := pricer.Rates(cfg.Tiers[0].Name)
	large, _ := pricer.Rates(cfg.Tiers[len(cfg.Tiers)-1].Name)
	rows, err := verify.LoadRows(data...)
	if err != nil {
		return err
	}
	train, val := verify.Split(rows, *seed)
	split := fmt.Sprintf("validation half (seed %d)", *seed)
	if *all {
		val, split = rows, "all rows"
	}
	e := answerEval{v: v, pm: pm, small: small, large: large, high: *high, low: *low}
	if err := e.run(os.Stdout, val, split, *plot); err != nil {
		return err
	}
	if *signals {
		return singleSignals(os.Stdout, train, val)
	}
	return nil
}

type answerEval struct {
	v            *verify.Verifier
	pm           *router.Learned
	small, large costing.Rates
	high, low    float64
}

// pool is one evaluation set: a source, or the mixed pool of all of them
// with equal weight per source.
type pool struct {
	name   string
	rows   []verify.Row
	w      []float64
	weak   []int
	strong []int
	hasLP  bool
}

func (e *answerEval) run(out io.Writer, rows []verify.Row, split, plot string) error {
	names, groups := verify.BySource(rows)
	var pools []pool
	for _, n := range names {
		g := groups[n]
		w := make([]float64, len(g))
		for i := range w {
			w[i] = 1
		}
		pools = append(pools, newPool(n, g, w))
	}
	if len(names) > 1 {
		pools = append(pools, newPool("mixed", rows, verify.SourceWeights(rows)))
	}
	fmt.Fprintf(out, "answer verifier on the %s: %d rows; mixed = every source with an equal share\n\n", split, len(rows))
	fmt.Fprintf(out, "%-20s %-16s %6s %7s %7s %7s\n", "source", "scorer", "n", "APGR", "CPT50", "CPT80")
	var panels, costPanels []router.PlotPanel
	for _, p := range pools {
		cols := e.columns(&p)
		panel := router.PlotPanel{Title: fmt.Sprintf("%s (n=%d)", p.name, len(p.rows))}
		for _, c := range cols {
			if c.logprobsOnly && !p.hasLP {
				fmt.Fprintf(out, "%-20s %-16s %6d %7s\n", p.name, c.name, len(p.rows), "—")
				continue
			}
			q, weak, strong := verify.WeightedCurve(c.scores, p.weak, p.strong, p.w, router.EvalPoints)
			mt := metricsOf(q, weak, strong)
			fmt.Fprintf(out, "%-20s %-16s %6d %7.3f %6.1f%% %6.1f%%\n", p.name, c.name, len(p.rows), mt.APGR, 100*mt.CPT50, 100*mt.CPT80)
			panel.Weak, panel.Strong = weak, strong
			panel.Curves = append(panel.Curves, router.PlotCurve{Name: c.name, Color: c.color, Dash: c.dash, X: mt.Shares, Y: q, Label: fmt.Sprintf("APGR %.3f", mt.APGR)})
		}
		fmt.Fprintf(out, "%-20s weak %.3f strong %.3f\n", p.name, panel.Weak, panel.Strong)
		panels = append(panels, panel)
		costPanels = append(costPanels, e.costPanel(&p, cols[0].scores, cols[1].scores, panel.Weak, panel.Strong))
	}
	fmt.Fprintf(out, "\ncost-adjusted: quality (PGR) reachable at a total cost ≤ the share of the all-large cost; small = %.3f, large = %.3f USD per million output tokens\n", e.small.OutputUSD*1e6, e.large.OutputUSD*1e6)
	fmt.Fprintf(out, "cascade pays the small answer on every cascaded request; hybrid sends the top %.0f%% by prompt score straight to large, serves the bottom %.0f%% on small unchecked, cascades the rest\n", 100*e.high, 100*e.low)
	budgets := []float64{0.3, 0.4, 0.5, 0.6, 0.8}
	fmt.Fprintf(out, "%-20s %-8s %9s", "source", "mode", "costAPGR")
	for _, b := range budgets {
		fmt.Fprintf(out, " %7s", fmt.Sprintf("@%.0f%%", 100*b))
	}
	fmt.Fprintln(out)
	for i, cp := range costPanels {
		for _, c := range cp.Curves {
			if c.Dash {
				continue
			}
			gap := cp.Strong - cp.Weak
			fmt.Fprintf(out, "%-20s %-8s %9.3f", pools[i].name, c.Name, areaUnder(c.X, c.Y, cp.Weak, gap))
			for _, b := range budgets {
				fmt.Fprintf(out, " %7.3f", (reach(c.X, c.Y, b, cp.Weak)-cp.Weak)/gap)
			}
			fmt.Fprintln(out)
		}
	}
	if plot == "" {
		return nil
	}
	costPlot := strings.TrimSuffix(plot, ".svg") + "-cost.svg"
	for _, f := range []struct {
		path   string
		panels []router.PlotPanel
	}{{plot, panels}, {costPlot, costPanels}} {
		if err := writeSVG(f.path, f.panels); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "eval: wrote %s\n", f.path)
	}
	return nil
}

func newPool(name string, rows []verify.Row, w []float64) pool {
	p := pool{name: name, rows: rows, w: w}
	p.weak, p.strong = verify.Outcomes(rows)
	for i := range rows {
		if len(rows[i].Small.TopLogprobs) > 0 || len(rows[i].Small.Logprobs) > 0 {
			p.hasLP = true
		}
	}
	return p
}

// columns scores the pool's rows every way compared. The first column is
// the verifier, the second the prompt scorer (the cost curves use both).
func (e *answerEval) columns(p *pool) []scorerColumn {
	n := len(p.rows)
	ver, prm, plen, alen, risk := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
	for i := range p.rows {
		r := &p.rows[i]
		in, a := r.Input(), r.Small.Answer()
		ver[i] = e.v.Score(in, a)
		prm[i] = e.pm.Score(in)
		plen[i] = float64(len(r.Prompt))
		alen[i] = float64(len(r.Small.Text))
		if len(a.Tokens) > 0 {
			t := a.Tokens[0]
			risk[i] = 1 - math.Exp(float64(t.Logprob))
		}
	}
	return []scorerColumn{
		{name: "verifier", color: "#d62728", scores: ver},
		{name: "prompt scorer", color: "#9467bd", scores: prm},
		{name: "prompt length", color: "#1f77b4", scores: plen},
		{name: "answer length", color: "#17becf", scores: alen},
		{name: "1 − p(top)", color: "#ff7f0e", scores: risk, logprobsOnly: true},
		{name: "random", color: "#7f7f7f", dash: true, scores: randomScores(n)},
		{name: "oracle", color: "#2ca02c", dash: true, scores: router.OracleScores(p.weak, p.strong)},
	}
}

// randomScores is a fixed pseudo-random order (a router that ignores the
// request).
func randomScores(n int) []float64 {
	s := make([]float64, n)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range s {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		s[i] = float64(x>>11) / (1 << 53)
	}
	return s
}

func metricsOf(q []float64, weak, strong float64) router.Metrics {
	mt := router.Metrics{N: len(q), Weak: weak, Strong: strong, Quality: q}
	mt.Shares = make([]float64, len(q))
	mt.PGR = make([]float64, len(q))
	gap := strong - weak
	var auc float64
	for k := range q {
		mt.Shares[k] = float64(k) / float64(len(q)-1)
		if gap != 0 {
			mt.PGR[k] = (q[k] - weak) / gap
		}
		if k > 0 {
			auc += (q[k] + q[k-1]) / 2 / float64(len(q)-1)
		}
	}
	if gap != 0 {
		mt.APGR = (auc - weak) / gap
	}
	mt.CPT50, mt.CPT80 = cptOf(mt.Shares, mt.PGR, 0.5), cptOf(mt.Shares, mt.PGR, 0.8)
	return mt
}

func cptOf(x, pgr []float64, p float64) float64 {
	for k := range pgr {
		if pgr[k] >= p {
			if k == 0 {
				return x[0]
			}
			return x[k-1] + (p-pgr[k-1])/(pgr[k]-pgr[k-1])*(x[k]-x[k-1])
		}
	}
	return math.NaN()
}

// ---- cost ----

// tokensOf estimates a text's tokens: about four bytes each, at least one.
func tokensOf(s string) float64 { return max(1, math.Ceil(float64(len(s))/4)) }

// costPanel traces quality against total cost, as a share of serving every
// request on the large tier, for route (prompt scorer), cascade (verifier)
// and hybrid. The large model's answer is assumed as long as the small
// one's.
func (e *answerEval) costPanel(p *pool, ver, prm []float64, weak, strong float64) router.PlotPanel {
	n := len(p.rows)
	cs, cl := make([]float64, n), make([]float64, n)
	var allLarge, W float64
	for i := range p.rows {
		r := &p.rows[i]
		in, o := tokensOf(r.Prompt), tokensOf(r.Small.Text)
		cs[i] = in*e.small.InputUSD + o*e.small.OutputUSD
		cl[i] = in*e.large.InputUSD + o*e.large.OutputUSD
		allLarge += p.w[i] * cl[i]
		W += p.w[i]
	}
	byVer, byPrm := orderDesc(ver), orderDesc(prm)
	rankPrm := make([]int, n)
	for k, i := range byPrm {
		rankPrm[i] = k
	}
	nHigh, nLow := int(math.Round(e.high*float64(n))), int(math.Round(e.low*float64(n)))
	const steps = 100
	var route, cascade, hybrid router.PlotCurve
	route = router.PlotCurve{Name: "route", Color: "#9467bd"}
	cascade = router.PlotCurve{Name: "cascade", Color: "#d62728"}
	hybrid = router.PlotCurve{Name: "hybrid", Color: "#2ca02c"}
	add := func(c *router.PlotCurve, cost, q float64) {
		c.X = append(c.X, cost/allLarge)
		c.Y = append(c.Y, q/W)
	}
	var mid []int
	for _, i := range byVer {
		if k := rankPrm[i]; k >= nHigh && k < n-nLow {
			mid = append(mid, i)
		}
	}
	for s := 0; s <= steps; s++ {
		x := float64(s) / steps
		// route: the top x by prompt score on large, the rest on small.
		var cost, q float64
		m := int(math.Round(x * float64(n)))
		for k, i := range byPrm {
			if k < m {
				cost, q = cost+p.w[i]*cl[i], q+p.w[i]*float64(p.strong[i])
			} else {
				cost, q = cost+p.w[i]*cs[i], q+p.w[i]*float64(p.weak[i])
			}
		}
		add(&route, cost, q)
		// cascade: small on all, the top x by verifier score also on large.
		cost, q = 0, 0
		for k, i := range byVer {
			cost += p.w[i] * cs[i]
			if k < m {
				cost, q = cost+p.w[i]*cl[i], q+p.w[i]*float64(p.strong[i])
			} else {
				q += p.w[i] * float64(p.weak[i])
			}
		}
		add(&cascade, cost, q)
		// hybrid: the band's top x by verifier score escalates.
		cost, q = 0, 0
		mm := int(math.Round(x * float64(len(mid))))
		for k, i := range byPrm {
			switch {
			case k < nHigh:
				cost, q = cost+p.w[i]*cl[i], q+p.w[i]*float64(p.strong[i])
			case k >= n-nLow:
				cost, q = cost+p.w[i]*cs[i], q+p.w[i]*float64(p.weak[i])
			}
		}
		for k, i := range mid {
			cost += p.w[i] * cs[i]
			if k < mm {
				cost, q = cost+p.w[i]*cl[i], q+p.w[i]*float64(p.strong[i])
			} else {
				q += p.w[i] * float64(p.weak[i])
			}
		}
		add(&hybrid, cost, q)
	}
	panel := router.PlotPanel{Title: p.name, Weak: weak, Strong: strong, XLabel: "total cost / cost of all-large"}
	for _, c := range []router.PlotCurve{route, cascade, hybrid} {
		c.Label = fmt.Sprintf("cost-APGR %.3f", areaUnder(c.X, c.Y, weak, strong-weak))
		panel.Curves = append(panel.Curves, clip(c))
	}
	return panel
}

func orderDesc(s []float64) []int {
	o := make([]int, len(s))
	for i := range o {
		o[i] = i
	}
	sort.SliceStable(o, func(a, b int) bool { return s[o[a]] > s[o[b]] })
	return o
}

// reach is the best quality a curve reaches at a cost of at most budget
// (weak when it cannot operate that cheaply).
func reach(x, y []float64, budget, weak float64) float64 {
	best := math.Inf(-1)
	for k := range x {
		if x[k] <= budget {
			best = max(best, y[k])
		}
		if k > 0 && x[k-1] <= budget && x[k] > budget && x[k] > x[k-1] {
			best = max(best, y[k-1]+(budget-x[k-1])/(x[k]-x[k-1])*(y[k]-y[k-1]))
		}
	}
	if math.IsInf(best, -1) {
		return weak
	}
	return best
}

// areaUnder is the cost-adjusted APGR: the mean PGR reachable over cost
// budgets from 0 to the all-large cost.
func areaUnder(x, y []float64, weak, gap float64) float64 {
	if gap == 0 {
		return 0
	}
	const steps = 200
	var s float64
	for k := 0; k <= steps; k++ {
		v := (reach(x, y, float64(k)/steps, weak) - weak) / gap
		if k == 0 || k == steps {
			v /= 2
		}
		s += v
	}
	return s / steps
}

// clip keeps a curve within cost ≤ 1 for the plot.
func clip(c router.PlotCurve) router.PlotCurve {
	var x, y []float64
	for k := range c.X {
		if c.X[k] <= 1 {
			x, y = append(x, c.X[k]), append(y, c.Y[k])
		} else if k > 0 && c.X[k-1] < 1 {
			t := (1 - c.X[k-1]) / (c.X[k] - c.X[k-1])
			x, y = append(x, 1), append(y, c.Y[k-1]+t*(c.Y[k]-c.Y[k-1]))
		}
	}
	c.X, c.Y = x, y
	return c
}

func writeSVG(path string, panels []router.PlotPanel) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := router.WriteSVG(f, panels); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// singleSignals reports each feature alone as a score, oriented by the sign
// of its correlation with the escalation gain on the training half.
func singleSignals(out io.Writer, train, val []verify.Row) error {
	Xt, Xv := verify.FeatureMatrix(train), verify.FeatureMatrix(val)
	wt := verify.SourceWeights(train)
	names, _ := verify.BySource(val)
	fmt.Fprintf(out, "\nsingle signals: validation APGR of each feature alone (direction from the training half)\n%-20s %4s", "feature", "dir")
	for _, s := range names {
		fmt.Fprintf(out, " %9.9s", s)
	}
	fmt.Fprintf(out, " %9s\n", "mixed")
	wk, st := verify.Outcomes(val)
	wv := verify.SourceWeights(val)
	for j, name := range verify.FeatureNames() {
		var mx, my, W float64
		for i := range train {
			g := float64(train[i].Strong - train[i].Weak)
			mx, my, W = mx+wt[i]*float64(Xt[i][j]), my+wt[i]*g, W+wt[i]
		}
		mx, my = mx/W, my/W
		var cov float64
		for i := range train {
			cov += wt[i] * (float64(Xt[i][j]) - mx) * (float64(train[i].Strong-train[i].Weak) - my)
		}
		dir := 1.0
		if cov < 0 {
			dir = -1
		}
		scores := make([]float64, len(val))
		for i := range val {
			scores[i] = dir * float64(Xv[i][j])
		}
		fmt.Fprintf(out, "%-20s %+4.0f", name, dir)
		for _, s := range names {
			idx := indicesOf(val, s)
			fmt.Fprintf(out, " %9.3f", evalAt(scores, val, idx).APGR)
		}
		fmt.Fprintf(out, " %9.3f\n", verify.WeightedAPGR(scores, wk, st, wv))
	}
	return nil
}

// ---- score ----

// answerLine is one input line of cascade score --answers.
type answerLine struct {
	ID     json.RawMessage `json:"id"`
	Prompt *string         `json:"prompt"`
	Small  *verify.Small   `json:"small"`
}

type answerOut struct {
	ID      json.RawMessage `json:"id"`
	Score   float64         `json:"score"`
	Tier    string          `json:"tier"`
	Reasons []router.Reason `json:"reasons"`
}

func runScoreAnswers(args []string) error {
	fs := flag.NewFlagSet("score --answers", flag.ContinueOnError)
	fs.Bool("answers", true, "score the small model's answers (this mode)")
	model := fs.String("model", "", "verifier model file (default: the built-in one)")
	threshold := fs.Float64("threshold", 0.5, "scores at or above escalate to the large tier")
	k := fs.Int("reasons", 3, "top contributing features to list per answer (0: none)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `usage: cascade score --answers [--model FILE] [--threshold T] < rows.jsonl > out.jsonl

Each input line is {"id": ..., "prompt": "...", "small": {"text": "...",
"top_logprobs": [{"token": " A", "logprob": -0.01}, ...], "finish_reason": "stop"}}
(top_logprobs and finish_reason optional; "logprobs": [{token, logprob,
top_logprobs}] for every token, OpenAI's chat format, also accepted). Each
output line, in input order, is {"id": ..., "score": 0.73, "tier": "large",
"reasons": [...]} (higher score = escalate), or {"id": ..., "error": "..."}.`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	v := verify.Default()
	if *model != "" {
		var err error
		if v, err = verify.Load(*model); err != nil {
			return err
		}
	}
	return scoreAnswers(os.Stdin, os.Stdout, v, *threshold, *k)
}

func scoreAnswers(r io.Reader, w io.Writer, v *verify.Verifier, threshold float64, k int) error {
	br := bufio.NewReaderSize(r, 1<<20)
	bw := bufio.NewWriterSize(w, 1<<16)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			if e := enc.Encode(scoreAnswerLine(line, v, threshold, k)); e != nil {
				return e
			}
		}
		if err == io.EOF {
			return bw.Flush()
		}
		if err != nil {
			return err
		}
	}
}

func scoreAnswerLine(line []byte, v *verify.Verifier, threshold float64, k int) any {
	var l answerLine
	if err := json.Unmarshal(line, &l); err != nil {
		return scoreErr{ID: orNull(l.ID), Error: "invalid JSON: " + err.Error()}
	}
	id := orNull(l.ID)
	if l.Small == nil {
		return scoreErr{ID: id, Error: `line has no "small" answer`}
	}
	in := &router.Input{}
	if l.Prompt != nil {
		in.Messages = []router.Message{{Role: "user", Content: *l.Prompt}}
	}
	a := l.Small.Answer()
	s := v.Score(in, a)
	o := answerOut{ID: id, Score: math.Round(s*1e4) / 1e4, Tier: "small", Reasons: []router.Reason{}}
	if s >= threshold {
		o.Tier = "large"
	}
	if k > 0 {
		o.Reasons = v.Explain(in, a, k)
		for i := range o.Reasons {
			o.Reasons[i].Contribution = math.Round(o.Reasons[i].Contribution*1e4) / 1e4
		}
	}
	return o
}

func orNull(id json.RawMessage) json.RawMessage {
	if len(id) == 0 {
		return json.RawMessage("null")
	}
	return id
}
