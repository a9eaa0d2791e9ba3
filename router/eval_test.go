package router

import (
	"math"
	"strings"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// Five prompts, hand-computed: in score order the gains of escalating are
// +1, +1, 0, −1, 0; weak 0.4, strong 0.6.
func TestEvaluateHandComputed(t *testing.T) {
	scores := []float64{0.9, 0.8, 0.7, 0.6, 0.5}
	weak := []int{0, 0, 1, 1, 0}
	strong := []int{1, 1, 1, 0, 0}
	m := Evaluate(scores, weak, strong)
	if !near(m.Weak, 0.4) || !near(m.Strong, 0.6) {
		t.Fatalf("weak %v strong %v", m.Weak, m.Strong)
	}
	want := []float64{0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.7, 0.6, 0.6, 0.6}
	for k := range want {
		if !near(m.Quality[k], want[k]) {
			t.Fatalf("quality[%d] = %v, want %v (all %v)", k, m.Quality[k], want[k], m.Quality)
		}
	}
	// AUC = 0.66 → APGR = (0.66 − 0.4) / 0.2.
	if !near(m.APGR, 1.3) {
		t.Errorf("APGR = %v, want 1.3", m.APGR)
	}
	if !near(m.CPT50, 0.1) {
		t.Errorf("CPT50 = %v, want 0.1", m.CPT50)
	}
	if !near(m.CPT80, 0.16) {
		t.Errorf("CPT80 = %v, want 0.16", m.CPT80)
	}
	// Reversing the scores routes the worst prompts first.
	rev := []float64{0.5, 0.6, 0.7, 0.8, 0.9}
	if r := Evaluate(rev, weak, strong); r.APGR >= 0.5 {
		t.Errorf("reversed order APGR = %v, want below random", r.APGR)
	}
}

func TestEvaluateTiesAreOrderFree(t *testing.T) {
	weak := []int{0, 1, 0, 1, 1, 0, 0, 1}
	strong := []int{1, 1, 1, 0, 1, 1, 0, 1}
	flat := make([]float64, len(weak))
	m := Evaluate(flat, weak, strong)
	if !near(m.APGR, 0.5) || !near(m.CPT50, 0.5) || !near(m.CPT80, 0.8) {
		t.Fatalf("constant scores: APGR %v CPT50 %v CPT80 %v, want 0.5, 0.5, 0.8", m.APGR, m.CPT50, m.CPT80)
	}
	// Same tied groups, rows permuted: same metrics.
	scores := []float64{1, 1, 0, 0, 1, 0, 1, 0}
	a := Evaluate(scores, weak, strong)
	p := []int{7, 6, 5, 4, 3, 2, 1, 0}
	ps, pw, pst := make([]float64, 8), make([]int, 8), make([]int, 8)
	for i, j := range p {
		ps[i], pw[i], pst[i] = scores[j], weak[j], strong[j]
	}
	b := Evaluate(ps, pw, pst)
	if !near(a.APGR, b.APGR) || !near(a.CPT80, b.CPT80) {
		t.Fatalf("permutation changed metrics: %v vs %v", a.APGR, b.APGR)
	}
}

func TestOracleAndRandom(t *testing.T) {
	weak := []int{0, 1, 0, 1, 1, 0, 0, 1, 1, 0}
	strong := []int{1, 1, 1, 0, 1, 1, 0, 1, 1, 1}
	o := Evaluate(OracleScores(weak, strong), weak, strong)
	r := RandomMetrics(weak, strong, 1, 500)
	if o.APGR <= 1 {
		t.Errorf("oracle APGR = %v, want > 1 when escalation sometimes hurts", o.APGR)
	}
	if math.Abs(r.APGR-0.5) > 0.05 {
		t.Errorf("random APGR = %v, want about 0.5", r.APGR)
	}
}

func TestCPTNeverReached(t *testing.T) {
	// The worst prompt is routed first, so PGR dips below zero, but the
	// last point always recovers the whole gap: CPT is reached by 100%.
	m := Evaluate([]float64{1, 0, 0.5}, []int{1, 0, 0}, []int{0, 1, 1})
	if m.PGR[3] >= 0 || m.CPT80 <= 0.5 || m.CPT80 > 1 {
		t.Errorf("PGR %v CPT80 = %v", m.PGR, m.CPT80)
	}
	if !math.IsNaN(cpt([]float64{0, 1}, []float64{0, 0.2}, 0.5)) {
		t.Error("cpt of an unreachable level should be NaN")
	}
}

func TestWriteSVG(t *testing.T) {
	var b strings.Builder
	err := WriteSVG(&b, []PlotPanel{{Title: "a<b", Weak: 0.5, Strong: 0.8, Curves: []PlotCurve{
		{Name: "learned", Color: "red", X: []float64{0, 1}, Y: []float64{0.5, 0.8}, Label: "APGR 0.6"},
		{Name: "random", Color: "gray", Dash: true, X: []float64{0, 1}, Y: []float64{0.5, 0.8}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	s := b.String()
	for _, want := range []string{"<svg", "</svg>", "a&lt;b", "learned  APGR 0.6", "stroke-dasharray=\"6,4\"", "<polyline"} {
		if !strings.Contains(s, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}
