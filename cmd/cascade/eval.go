package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"github.com/cascade-gateway/cascade/router"
)

func init() {
	register("eval", "measure routing quality (APGR, CPT) on labelled JSONL and plot it", runEval)
}

func runEval(args []string) error {
	if hasAnswers(args) {
		return runEvalAnswers(args)
	}
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	var data stringsFlag
	fs.Var(&data, "data", "labelled JSONL file (repeatable)")
	model := fs.String("model", "", "model file (default: the built-in model)")
	plot := fs.String("plot", "", "write an SVG plot of quality vs share of strong calls here")
	seed := fs.Int64("seed", 1, "seed of the train/validation split; must match the one the model was trained with")
	all := fs.Bool("all", false, "evaluate on every row, not only the validation half")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(data) == 0 {
		return errors.New("at least one --data file is required")
	}
	m := router.DefaultModel()
	if *model != "" {
		var err error
		if m, err = router.LoadModel(*model); err != nil {
			return err
		}
	}
	ex, err := router.LoadExamples(data...)
	if err != nil {
		return err
	}
	split := "validation half (seed " + fmt.Sprint(*seed) + ")"
	if !*all {
		_, ex = router.Split(ex, *seed)
	} else {
		split = "all rows"
	}
	return evaluate(os.Stdout, os.Stderr, m, ex, split, *plot)
}

func evaluate(out, progress io.Writer, m *router.Learned, ex []router.Example, split, plot string) error {
	names, groups := router.BySource(ex)
	// Score everything first (with progress on stderr), then print.
	scores := map[string][]float64{}
	done, last := 0, time.Now()
	for _, src := range names {
		g := groups[src]
		ours := make([]float64, len(g))
		for i := range g {
			ours[i] = m.Score(g[i].Input())
			done++
			if done%2000 == 0 || time.Since(last) > time.Second {
				fmt.Fprintf(progress, "\reval: scored %d/%d", done, len(ex))
				last = time.Now()
			}
		}
		scores[src] = ours
	}
	if done >= 2000 {
		fmt.Fprintf(progress, "\reval: scored %d/%d\n", done, len(ex))
	}
	fmt.Fprintf(out, "routing quality on %s: %d prompts\n\n", split, len(ex))
	fmt.Fprintf(out, "%-10s %-8s %6s %7s %7s %7s\n", "source", "router", "n", "APGR", "CPT50", "CPT80")
	var panels []router.PlotPanel
	for _, src := range names {
		g := groups[src]
		weak, strong := router.Outcomes(g)
		ours := scores[src]
		rows := []struct {
			name  string
			color string
			dash  bool
			mt    router.Metrics
		}{
			{"learned", "#d62728", false, router.Evaluate(ours, weak, strong)},
			{"length", "#1f77b4", false, router.Evaluate(router.ScoreAll(router.LengthScorer{Saturation: math.MaxInt}, g), weak, strong)},
			{"random", "#7f7f7f", true, router.RandomMetrics(weak, strong, 1, 200)},
			{"oracle", "#2ca02c", true, router.Evaluate(router.OracleScores(weak, strong), weak, strong)},
		}
		p := router.PlotPanel{Title: fmt.Sprintf("%s (n=%d)", src, len(g))}
		for _, r := range rows {
			fmt.Fprintf(out, "%-10s %-8s %6d %7.3f %6.1f%% %6.1f%%\n", src, r.name, r.mt.N, r.mt.APGR, 100*r.mt.CPT50, 100*r.mt.CPT80)
			p.Weak, p.Strong = r.mt.Weak, r.mt.Strong
			p.Curves = append(p.Curves, router.PlotCurve{
				Name: r.name, Color: r.color, Dash: r.dash, X: r.mt.Shares, Y: r.mt.Quality,
				Label: fmt.Sprintf("APGR %.3f", r.mt.APGR),
			})
		}
		fmt.Fprintf(out, "%-10s weak %.3f strong %.3f\n", src, p.Weak, p.Strong)
		panels = append(panels, p)
	}
	if len(names) > 1 {
		panels = append(panels, evaluateMixed(out, names, groups, scores))
	}
	if plot == "" {
		return nil
	}
	f, err := os.Create(plot)
	if err != nil {
		return err
	}
	if err := router.WriteSVG(f, panels); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(progress, "eval: wrote %s\n", plot)
	return nil
}

// evaluateMixed prints the mixed pool: an equal share of each source, pooled
// and ranked together; "prior" knows each source's mean gain in hindsight.
func evaluateMixed(out io.Writer, names []string, groups map[string][]router.Example, scores map[string][]float64) router.PlotPanel {
	var ex []router.Example
	var ours []float64
	for _, src := range names {
		ex = append(ex, groups[src]...)
		ours = append(ours, scores[src]...)
	}
	weak, strong := router.Outcomes(ex)
	rows := []struct {
		name, color string
		dash        bool
		mt          router.Metrics
	}{
		{"learned", "#d62728", false, router.EvaluateMixed(ex, ours)},
		{"length", "#1f77b4", false, router.EvaluateMixed(ex, router.ScoreAll(router.LengthScorer{Saturation: math.MaxInt}, ex))},
		{"prior", "#9467bd", true, router.EvaluateMixed(ex, router.SourcePrior(ex))},
		{"random", "#7f7f7f", true, router.RandomMixed(ex, 1, 200)},
		{"oracle", "#2ca02c", true, router.EvaluateMixed(ex, router.OracleScores(weak, strong))},
	}
	p := router.PlotPanel{Title: fmt.Sprintf("mixed: equal share of %d sets (n=%d)", len(names), len(ex))}
	for _, r := range rows {
		fmt.Fprintf(out, "%-10s %-8s %6d %7.3f %6.1f%% %6.1f%%\n", "mixed", r.name, r.mt.N, r.mt.APGR, 100*r.mt.CPT50, 100*r.mt.CPT80)
		p.Weak, p.Strong = r.mt.Weak, r.mt.Strong
		p.Curves = append(p.Curves, router.PlotCurve{
			Name: r.name, Color: r.color, Dash: r.dash, X: r.mt.Shares, Y: r.mt.Quality,
			Label: fmt.Sprintf("APGR %.3f", r.mt.APGR),
		})
	}
	fmt.Fprintf(out, "%-10s weak %.3f strong %.3f (prior: each set's mean gain, known in hindsight)\n", "mixed", p.Weak, p.Strong)
	return p
}
