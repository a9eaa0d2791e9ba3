package router

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cascade-gateway/cascade/config"
)

// dist draws one score.
type dist struct {
	name string
	draw func(r *rand.Rand) float64
}

func clamp01(x float64) float64 { return math.Min(1, math.Max(0, x)) }

var (
	uniform  = dist{"uniform", func(r *rand.Rand) float64 { return r.Float64() }}
	skewLow  = dist{"skewed-low", func(r *rand.Rand) float64 { return math.Pow(r.Float64(), 4) }} // like Beta(0.25, 1)
	skewHigh = dist{"skewed-high", func(r *rand.Rand) float64 { return 1 - math.Pow(r.Float64(), 3) }}
	// betaLike is the mean of three uniforms squared: unimodal, skewed low.
	betaLike = dist{"beta-like", func(r *rand.Rand) float64 {
		m := (r.Float64() + r.Float64() + r.Float64()) / 3
		return m * m
	}}
	bimodal = dist{"bimodal", func(r *rand.Rand) float64 {
		if r.Float64() < 0.7 {
			return clamp01(0.2 + 0.05*r.NormFloat64())
		}
		return clamp01(0.8 + 0.05*r.NormFloat64())
	}}
	// points has only three values: the threshold always falls on a tie.
	points = dist{"point-masses", func(r *rand.Rand) float64 {
		switch u := r.Float64(); {
		case u < 0.5:
			return 0.1
		case u < 0.8:
			return 0.5
		default:
			return 0.9
		}
	}}
	// narrow is a scorer that never leaves a small band: a few bins only.
	narrow = dist{"narrow", func(r *rand.Rand) float64 { return 0.40 + 0.01*r.Float64() }}
	// shifted is uniform moved up by 0.05: a small shift (about 5 points
	// more escalations at the old threshold for target 0.25).
	shifted = dist{"uniform+0.05", func(r *rand.Rand) float64 { return clamp01(r.Float64() + 0.05) }}
)

// run feeds n scores from d into cal and returns 1 for each escalation.
func run(cal *Calibrator, r *rand.Rand, d dist, n int, esc []byte) []byte {
	for i := 0; i < n; i++ {
		e, _ := cal.Decide(d.draw(r))
		if e {
			esc = append(esc, 1)
		} else {
			esc = append(esc, 0)
		}
	}
	return esc
}

// worstWindow is the largest |rate - target| over every run of w consecutive
// entries of esc[from:], and where it starts.
func worstWindow(esc []byte, from, w int, target float64) (worst float64, at int) {
	sum := 0
	for i := from; i < from+w; i++ {
		sum += int(esc[i])
	}
	for i := from; ; i++ {
		if d := math.Abs(float64(sum)/float64(w) - target); d > worst {
			worst, at = d, i
		}
		if i+w >= len(esc) {
			return worst, at
		}
		sum += int(esc[i+w]) - int(esc[i])
	}
}

func newCal(t testing.TB, target float64, window int) *Calibrator {
	t.Helper()
	cal := NewCalibrator(config.Routing{Threshold: 0.5, TargetEscalationRate: target, Calibration: config.Calibration{Window: window}})
	if cal == nil {
		t.Fatal("no calibrator")
	}
	return cal
}

// TestCalibrationStationary: after one window of warm-up, every 10,000
// consecutive requests escalate within ±2 points of the target.
func TestCalibrationStationary(t *testing.T) {
	const warm, n, w = 10000, 60000, 10000
	targets := []float64{0.05, 0.25, 0.5, 0.8}
	if raceEnabled {
		targets = []float64{0.25}
	}
	for di, d := range []dist{uniform, skewLow, skewHigh, betaLike, bimodal, points, narrow} {
		for _, target := range targets {
			t.Run(fmt.Sprintf("%s/%g", d.name, target), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(di+1), uint64(target*1000)))
				cal := newCal(t, target, w)
				esc := run(cal, r, d, warm+n, nil)
				worst, at := worstWindow(esc, warm, w, target)
				t.Logf("worst 10k-window deviation %.2f points (window at %d), threshold %.4f, shifts %d", 100*worst, at, cal.Threshold(), cal.Shifts())
				if worst > 0.02 {
					t.Fatalf("realised rate off the target by %.2f points in the window starting at %d", 100*worst, at)
				}
			})
		}
	}
}

// TestCalibrationShift: after the score distribution changes, the realised
// rate is back within ±2 points within 5,000 requests: every 10,000
// consecutive requests from 5,000 after the shift on are within the band.
// The detected shift also shows in Shifts.
func TestCalibrationShift(t *testing.T) {
	const before, after, w = 20000, 30000, 10000
	cases := []struct {
		from, to dist
		target   float64
	}{
		{uniform, skewLow, 0.25},
		{skewLow, uniform, 0.25},
		{uniform, shifted, 0.25},
		{bimodal, points, 0.25},
		{points, skewHigh, 0.1},
		{betaLike, bimodal, 0.5},
		{narrow, uniform, 0.2},
		{skewHigh, narrow, 0.3},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%s->%s/%g", tc.from.name, tc.to.name, tc.target), func(t *testing.T) {
			r := rand.New(rand.NewPCG(7, uint64(i)))
			cal := newCal(t, tc.target, w)
			esc := run(cal, r, tc.from, before, nil)
			esc = run(cal, r, tc.to, after, esc)
			worst, at := worstWindow(esc, before+5000, w, tc.target)
			// How soon after the shift the trailing 1,000 requests are
			// within 3 points (for the note; 1,000 requests alone carry
			// about 1.4 points of sampling noise).
			back := -1
			sum := 0
			for j := before; j < len(esc); j++ {
				sum += int(esc[j])
				if j-before >= 1000 {
					sum -= int(esc[j-1000])
					if back < 0 && math.Abs(float64(sum)/1000-tc.target) <= 0.03 {
						back = j - before
					}
				}
			}
			t.Logf("worst 10k-window deviation from shift+5000: %.2f points; trailing-1000 rate within 3 points %d requests after the shift; shifts detected %d", 100*worst, back, cal.Shifts())
			if worst > 0.02 {
				t.Fatalf("realised rate off the target by %.2f points in the window starting %d after the shift", 100*worst, at-before)
			}
			if back < 0 || back > 5000 {
				t.Fatalf("the trailing 1,000 requests were not within 3 points of the target by 5,000 after the shift (%d)", back)
			}
			if cal.Shifts() == 0 {
				t.Fatal("the shift was not detected")
			}
		})
	}
}

// TestCalibrationTies: with three point masses the threshold lands on a tie
// and the tied scores escalate in the proportion that meets the target.
func TestCalibrationTies(t *testing.T) {
	cal := newCal(t, 0.25, 10000)
	r := rand.New(rand.NewPCG(3, 3))
	run(cal, r, points, 20000, nil)
	// 20% score 0.9, 30% score 0.5: a quarter needs all the 0.9s and a
	// sixth of the 0.5s.
	if th := cal.Threshold(); th < 0.5 || th > 0.5+1.0/CalibrationBins {
		t.Fatalf("threshold %.4f, want within the bin of 0.5", th)
	}
	n, esc := 0, 0
	for i := 0; i < 60000; i++ {
		if cal.Escalates(0.5) {
			esc++
		}
		n++
	}
	if got := float64(esc) / float64(n); math.Abs(got-1.0/6) > 0.01 {
		t.Fatalf("share of tied 0.5 scores escalated %.3f, want 1/6", got)
	}
	if cal.Escalates(0.1) || !cal.Escalates(0.9) {
		t.Fatal("scores below the tie must stay, above it escalate")
	}
}

// TestCalibrationExtremes: a stream of identical scores cannot be split by
// score; the tie rule still meets the target.
func TestCalibrationExtremes(t *testing.T) {
	for _, s := range []float64{0, 1, 0.5, math.NaN(), -3, 7} {
		cal := newCal(t, 0.3, 1000)
		esc := 0
		for i := 0; i < 20000; i++ {
			if e, _ := cal.Decide(s); e && i >= 10000 {
				esc++
			}
		}
		if got := float64(esc) / 10000; math.Abs(got-0.3) > 0.02 {
			t.Fatalf("score %v: rate %.3f, want 0.3", s, got)
		}
	}
}

// TestCalibrationWarmup: before any score the configured threshold applies;
// a first estimate comes after a few dozen scores.
func TestCalibrationWarmup(t *testing.T) {
	cal := NewCalibrator(config.Routing{Threshold: 0.7, TargetEscalationRate: 0.5})
	if cal.Threshold() != 0.7 || cal.Window() != 10000 {
		t.Fatalf("threshold %v window %d", cal.Threshold(), cal.Window())
	}
	if cal.Escalates(0.69) || !cal.Escalates(0.7) {
		t.Fatal("warm-up must compare with the configured threshold")
	}
	for i := 0; i < 64; i++ {
		cal.Observe(0.1)
	}
	if th := cal.Threshold(); th > 0.11 {
		t.Fatalf("threshold %v after 64 scores of 0.1", th)
	}
	if NewCalibrator(config.Routing{Threshold: 0.5}) != nil {
		t.Fatal("fixed threshold needs no calibrator")
	}
	if w := newCal(t, 0.2, 5).Window(); w != minWindow {
		t.Fatalf("window %d, want raised to %d", w, minWindow)
	}
}

// TestCalibrationNoFalseShifts: a long stationary stream does not trigger
// the shift detector.
func TestCalibrationNoFalseShifts(t *testing.T) {
	for _, d := range []dist{uniform, bimodal, points} {
		cal := newCal(t, 0.25, 10000)
		run(cal, rand.New(rand.NewPCG(11, 11)), d, 120000, nil)
		if s := cal.Shifts(); s > 1 {
			t.Fatalf("%s: %d shifts detected on a stationary stream", d.name, s)
		}
	}
}

// TestCalibrationConcurrent: many goroutines deciding at once lose no score
// and keep the rate (run with -race).
func TestCalibrationConcurrent(t *testing.T) {
	cal := newCal(t, 0.25, 10000)
	const workers, each = 8, 20000
	var wg sync.WaitGroup
	var mu sync.Mutex
	esc := 0
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, seed))
			n := 0
			for i := 0; i < each; i++ {
				if e, _ := cal.Decide(r.Float64()); e && i >= each/2 {
					n++
				}
			}
			mu.Lock()
			esc += n
			mu.Unlock()
		}(uint64(w))
	}
	wg.Wait()
	if cal.Seen() != workers*each {
		t.Fatalf("seen %d, want %d", cal.Seen(), workers*each)
	}
	if got := float64(esc) / (workers * each / 2); math.Abs(got-0.25) > 0.02 {
		t.Fatalf("rate %.3f under concurrency", got)
	}
	if th := cal.Threshold(); math.Abs(th-0.75) > 0.03 {
		t.Fatalf("threshold %.3f, want about 0.75", th)
	}
}

// TestCalibrationFleet: two gateways with different score distributions
// exchange histograms; the shared threshold holds the target for both
// together while neither holds it alone. Traffic is split 3:1 and the rates
// say so.
func TestCalibrationFleet(t *testing.T) {
	splits := []int{1, 3}
	if raceEnabled {
		splits = splits[1:]
	}
	for _, split := range splits {
		t.Run(fmt.Sprintf("split-%d:1", split), func(t *testing.T) {
			const target = 0.25
			a, b := newCal(t, target, 10000), newCal(t, target, 10000)
			ra, rb := rand.New(rand.NewPCG(1, 2)), rand.New(rand.NewPCG(3, 4))
			ha, hb := make([]uint32, CalibrationBins), make([]uint32, CalibrationBins)
			sync := func() {
				a.WindowCounts(ha)
				b.WindowCounts(hb)
				a.SetFleet(float64(split), []Peer{{Counts: hb, Rate: 1}})
				b.SetFleet(1, []Peer{{Counts: ha, Rate: float64(split)}})
			}
			var ea, eb, na, nb int
			for round := 0; round < 400; round++ {
				for i := 0; i < 100*split; i++ {
					if e, _ := a.Decide(uniform.draw(ra)); round >= 100 {
						na++
						if e {
							ea++
						}
					}
				}
				for i := 0; i < 100; i++ {
					if e, _ := b.Decide(skewLow.draw(rb)); round >= 100 {
						nb++
						if e {
							eb++
						}
					}
				}
				sync() // every 100 requests of b: a sync period
			}
			all := float64(ea+eb) / float64(na+nb)
			t.Logf("fleet rate %.4f (a %.4f on uniform, b %.4f on skewed), thresholds %.4f %.4f", all, float64(ea)/float64(na), float64(eb)/float64(nb), a.Threshold(), b.Threshold())
			if math.Abs(all-target) > 0.02 {
				t.Fatalf("fleet rate %.4f, want %.2f±0.02", all, target)
			}
			if math.Abs(a.Threshold()-b.Threshold()) > 0.01 {
				t.Fatalf("thresholds differ: %.4f vs %.4f", a.Threshold(), b.Threshold())
			}
			ra2 := float64(ea) / float64(na)
			rb2 := float64(eb) / float64(nb)
			if math.Abs(ra2-target) < 0.05 || math.Abs(rb2-target) < 0.05 {
				t.Fatalf("each gateway alone is near the target (%.3f, %.3f): the histograms were not merged", ra2, rb2)
			}
			// Back to local calibration: each holds the target alone.
			a.ClearFleet()
			n, e := 0, 0
			for i := 0; i < 30000; i++ {
				if x, _ := a.Decide(uniform.draw(ra)); x && i >= 10000 {
					e++
				}
				if i >= 10000 {
					n++
				}
			}
			if got := float64(e) / float64(n); math.Abs(got-target) > 0.02 {
				t.Fatalf("after ClearFleet: rate %.3f", got)
			}
		})
	}
}

// TestCalibratorMatches: a calibrator survives a reload with the same
// settings only.
func TestCalibratorMatches(t *testing.T) {
	base := config.Routing{Threshold: 0.5, TargetEscalationRate: 0.25, Calibration: config.Calibration{Window: 10000}}
	cal := NewCalibrator(base)
	same := base
	same.Threshold = 0.6
	same.AllowTierHeader = true
	if !cal.Matches(same) {
		t.Fatal("threshold and header changes must keep the calibration")
	}
	for name, c := range map[string]config.Routing{
		"target": {TargetEscalationRate: 0.3, Calibration: config.Calibration{Window: 10000}},
		"window": {TargetEscalationRate: 0.25, Calibration: config.Calibration{Window: 5000}},
		"scorer": {TargetEscalationRate: 0.25, Calibration: config.Calibration{Window: 10000}, Scorer: "length"},
	} {
		if cal.Matches(c) {
			t.Fatalf("%s changed but the calibration matched", name)
		}
	}
	var none *Calibrator
	if none.Matches(base) {
		t.Fatal("nil matched")
	}
}
