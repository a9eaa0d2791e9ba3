package router

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cascade-gateway/cascade/config"
)

// fixedScorer returns the length of the first message's content as a
// score in hundredths, for exact control in tests.
type fixedScorer struct{}

func (fixedScorer) Score(in *Input) float64 {
	if len(in.Messages) == 0 {
		return 0
	}
	return float64(len(in.Messages[0].Content)) / 100
}

func inputOf(score float64) *Input {
	return &Input{Messages: []Message{{Role: "user", Content: strings.Repeat("x", int(math.Round(score*100)))}}}
}

func ptr(f float64) *float64 { return &f }

func compileT(t testing.TB, c config.Routing, tiers ...string) *Policy {
	t.Helper()
	if len(tiers) == 0 {
		tiers = []string{"small", "large"}
	}
	p, err := Compile(c, tierList(tiers...), nil)
	if err != nil {
		t.Fatal(err)
	}
	p.scorer = fixedScorer{}
	return p
}

func tierList(names ...string) []config.Tier {
	ts := make([]config.Tier, len(names))
	for i, n := range names {
		ts[i].Name = n
	}
	return ts
}

func TestPolicyRoute(t *testing.T) {
	c := config.Routing{
		Threshold:       0.5,
		AllowTierHeader: true,
		Aliases: []config.Alias{
			{Name: "cheap", Mode: "never"},
			{Name: "best", Mode: "always"},
			{Name: "picky", Threshold: ptr(0.8)},
			{Name: "plain"},
		},
	}
	p := compileT(t, c, "small", "medium", "large")
	cases := []struct {
		name, model, header string
		score               float64
		tier, reason        string
		threshold           float64
	}{
		{"auto below", "auto", "", 0.49, "small", "", 0.5},
		{"auto at threshold escalates", "auto", "", 0.5, "large", "score", 0.5},
		{"unknown model is auto", "whatever", "", 0.7, "large", "score", 0.5},
		{"plain alias is auto", "plain", "", 0.6, "large", "score", 0.5},
		{"never", "cheap", "", 1, "small", "", 0.5},
		{"always", "best", "", 0, "large", "alias", 0.5},
		{"alias threshold below", "picky", "", 0.7, "small", "", 0.8},
		{"alias threshold at", "picky", "", 0.8, "large", "score", 0.8},
		{"header escalates", "auto", "medium", 0, "medium", "header", 0.5},
		{"header to cheapest", "auto", "small", 0.9, "small", "", 0.5},
		{"header beats never", "cheap", "large", 0, "large", "header", 0.5},
		{"header beats always", "best", "small", 0, "small", "", 0.5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := p.Route(tc.model, tc.header, inputOf(tc.score))
			if err != nil {
				t.Fatal(err)
			}
			if d.Tier != tc.tier || d.Reason != tc.reason || d.Escalated != (tc.reason != "") || d.Threshold != tc.threshold {
				t.Fatalf("got %+v, want tier %s reason %q threshold %v", d, tc.tier, tc.reason, tc.threshold)
			}
			if math.Abs(d.Score-tc.score) > 1e-9 {
				t.Fatalf("score %v, want %v", d.Score, tc.score)
			}
		})
	}
	if _, err := p.Route("auto", "huge", inputOf(0)); !errors.Is(err, ErrUnknownTier) || !strings.Contains(err.Error(), `"huge"`) {
		t.Fatalf("unknown tier header: %v", err)
	}
}

func TestPolicyHeaderNotAllowed(t *testing.T) {
	p := compileT(t, config.Routing{Threshold: 0.5})
	for _, h := range []string{"large", "nonsense"} {
		d, err := p.Route("auto", h, inputOf(0.1))
		if err != nil || d.Tier != "small" || d.Escalated {
			t.Fatalf("header %q not allowed but honoured: %+v %v", h, d, err)
		}
	}
}

func TestPolicyOneTier(t *testing.T) {
	p := compileT(t, config.Routing{Threshold: 0.5, Aliases: []config.Alias{{Name: "best", Mode: "always"}}}, "only")
	for _, m := range []string{"auto", "best"} {
		d, _ := p.Route(m, "", inputOf(0.9))
		if d.Tier != "only" || d.Escalated {
			t.Fatalf("%s: %+v", m, d)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	if _, err := Compile(config.Routing{}, nil, nil); err == nil {
		t.Fatal("no tiers accepted")
	}
	if _, err := Compile(config.Routing{Aliases: []config.Alias{{Name: "x", Mode: "sometimes"}}}, tierList("a"), nil); err == nil {
		t.Fatal("bad alias mode accepted")
	}
	if _, err := Compile(config.Routing{ModelFile: "/nonexistent/model.json"}, tierList("a"), nil); err == nil {
		t.Fatal("missing model file accepted")
	}
	p, err := Compile(config.Routing{Scorer: "length"}, tierList("a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Scorer().(LengthScorer); !ok {
		t.Fatalf("scorer length compiled to %T", p.Scorer())
	}
}

// TestPolicyTargetMode: in target mode Route feeds the calibrator, DryRun
// and the never/always/fixed aliases and the header do not, and the realised
// share of escalations meets the target.
func TestPolicyTargetMode(t *testing.T) {
	c := config.Routing{Threshold: 0.5, TargetEscalationRate: 0.2, AllowTierHeader: true,
		Aliases: []config.Alias{{Name: "cheap", Mode: "never"}, {Name: "best", Mode: "always"}, {Name: "picky", Threshold: ptr(0.9)}}}
	p := compileT(t, c)
	if p.Calibrator() == nil || p.TargetRate() != 0.2 {
		t.Fatal("target mode has no calibrator")
	}
	r := rand.New(rand.NewPCG(5, 5))
	esc := 0
	for i := 0; i < 30000; i++ {
		d, _ := p.Route("auto", "", inputOf(float64(r.IntN(101))/100))
		if d.Escalated && i >= 10000 {
			esc++
		}
	}
	if got := float64(esc) / 20000; math.Abs(got-0.2) > 0.02 {
		t.Fatalf("rate %.3f, want 0.2", got)
	}
	seen := p.Calibrator().Seen()
	p.DryRun("auto", "", inputOf(0.3))
	p.Route("cheap", "", inputOf(0.3))
	p.Route("best", "", inputOf(0.3))
	p.Route("picky", "", inputOf(0.3))
	p.Route("auto", "large", inputOf(0.3))
	if got := p.Calibrator().Seen(); got != seen {
		t.Fatalf("calibrator saw %d scores that the calibrated threshold did not decide", got-seen)
	}
	if th := p.Threshold(); math.Abs(th-0.8) > 0.03 {
		t.Fatalf("threshold %.3f, want about 0.8 for the top fifth of 0..1", th)
	}
	d, _ := p.DryRun("auto", "", inputOf(0.99))
	if !d.Escalated || d.Threshold != p.Threshold() {
		t.Fatalf("dry run %+v", d)
	}

	// A reload with the same target keeps the calibration; another target
	// starts afresh.
	p2, err := Compile(c, tierList("small", "large"), p.Calibrator())
	if err != nil || p2.Calibrator() != p.Calibrator() {
		t.Fatal("calibrator not kept across a reload with the same settings")
	}
	c.TargetEscalationRate = 0.3
	p3, _ := Compile(c, tierList("small", "large"), p.Calibrator())
	if p3.Calibrator() == p.Calibrator() || p3.Calibrator().Seen() != 0 {
		t.Fatal("calibrator kept although the target changed")
	}
	c.TargetEscalationRate = 0
	p4, _ := Compile(c, tierList("small", "large"), p.Calibrator())
	if p4.Calibrator() != nil || p4.TargetRate() != 0 || p4.Threshold() != 0.5 {
		t.Fatal("fixed mode after target mode")
	}
}

func benchInput() *Input {
	return &Input{Messages: []Message{{Role: "system", Content: "You are a helpful assistant."},
		{Role: "user", Content: "Explain the difference between a mutex and a semaphore, with an example in Go."}}}
}

// BenchmarkDecide measures the policy around the scorer (the length
// scorer, so the policy's own cost shows): fixed threshold, target rate with
// calibration, and both from many goroutines.
func BenchmarkDecide(b *testing.B) {
	for _, bc := range []struct {
		name  string
		c     config.Routing
		tiers []config.Tier
	}{
		{"fixed", config.Routing{Threshold: 0.5}, nil},
		{"fixed-context", config.Routing{Threshold: 0.5},
			[]config.Tier{{Name: "small", MaxContextTokens: 8192}, {Name: "large", MaxContextTokens: 131072}}},
		{"target", config.Routing{Threshold: 0.5, TargetEscalationRate: 0.25}, nil},
		{"target-alias-header", config.Routing{Threshold: 0.5, TargetEscalationRate: 0.25, AllowTierHeader: true,
			Aliases: []config.Alias{{Name: "cheap", Mode: "never"}}}, nil},
	} {
		if bc.tiers == nil {
			bc.tiers = tierList("small", "large")
		}
		p, err := Compile(bc.c, bc.tiers, nil)
		if err != nil {
			b.Fatal(err)
		}
		p.scorer = LengthScorer{Saturation: 200}
		in := benchInput()
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := p.Route("auto", "", in); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					p.Route("auto", "", in)
				}
			})
		})
	}
}

// BenchmarkObserve is the calibrator's hot path alone, including the
// amortised block rotation.
func BenchmarkObserve(b *testing.B) {
	cal := NewCalibrator(config.Routing{Threshold: 0.5, TargetEscalationRate: 0.25})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		x := 0.0
		for pb.Next() {
			x += 0.618034
			if x >= 1 {
				x--
			}
			cal.Decide(x)
		}
	})
}
