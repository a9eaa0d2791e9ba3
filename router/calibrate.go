package router

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/cascade-gateway/cascade/config"
)

// CalibrationBins is the resolution of the calibration histogram: scores are counted in
// CalibrationBins equal bins over [0, 1]. Ties and the scores that share the threshold's
// bin are escalated at random in the proportion that meets the target, so the
// resolution only limits which scores within 1/CalibrationBins of the threshold escalate,
// never the rate.
const CalibrationBins = 1024

// Calibration defaults and bounds.
const (
	// minWindow keeps the quantile meaningful: below about a hundred scores
	// the sampling error alone exceeds the ±2 point band.
	minWindow = 100
	// blocksPerWindow: the window slides in blocks of window/20 scores (500
	// for the default 10,000), so the oldest twentieth leaves at once.
	blocksPerWindow = 20
	// shiftZ is how many standard errors the recent blocks' escalation
	// share must differ from the target before the older blocks are
	// dropped as a different distribution. At 4.5 a stationary stream
	// triggers about once in 150,000 tests.
	shiftZ = 4.5
)

// Calibrator keeps a threshold at the (1-target) quantile of the recent score
// distribution, so that about the target share of requests escalates. It is
// safe for concurrent use. Observe and the threshold read are lock-free and
// allocation-free; once every window/20 observations one caller rebuilds the
// threshold under a mutex (a few microseconds).
//
// The window is a ring of blocks, each a histogram of window/20 scores. When
// the newest blocks' scores would escalate a share that differs from the
// target by more than sampling noise explains, the distribution has shifted
// and the older blocks are dropped, so the threshold follows a shift within a
// few blocks instead of a whole window.
//
// With a fleet (SetFleet), the threshold is the quantile of the merged
// distribution of all gateways, each weighted by its request rate, so the
// fleet together escalates the target share.
type Calibrator struct {
	target  float64
	window  int
	block   uint64 // scores per block
	nblocks int    // completed blocks kept
	key     calKey

	seen atomic.Uint64            // scores observed, ever
	cur  atomic.Pointer[calBlock] // the block being filled
	cut  atomic.Pointer[cut]      // what Decide compares against

	shifts atomic.Uint64 // times older blocks were dropped

	// mu guards the ring, the fleet state and the scratch arrays; it is held
	// only while rebuilding the threshold, never by Observe's fast path.
	mu     sync.Mutex
	ring   []*calBlock // completed blocks, oldest first
	free   []*calBlock
	total  [CalibrationBins]uint64 // sealed counts of the ring's blocks
	totalN uint64
	local  [CalibrationBins]uint64  // scratch: window counts incl. the current block
	merged [CalibrationBins]float64 // scratch: weighted fleet counts
	recent [CalibrationBins]uint64  // scratch: newest blocks
	// fleet: the other gateways' histograms, already weighted by rate/count.
	fleet     []float64
	fleetOn   bool
	localRate float64
}

// calBlock counts the scores of one block. Observe adds to counts; when the
// block is closed its counts are copied to sealed (and n), which the window
// totals are built from.
type calBlock struct {
	counts [CalibrationBins]atomic.Uint32
	sealed [CalibrationBins]uint32
	n      uint64
}

// reset clears a block that no Observe can reach (it is not the current
// block), with a plain memory clear rather than 1024 atomic stores.
func (b *calBlock) reset() { *b = calBlock{} }

// cut is an immutable threshold. A score escalates when its bin is above bin,
// or equal to it with probability p (pu/2^64). During warm-up (fixed) the
// configured threshold applies as is.
type cut struct {
	fixed     bool
	bin       int
	pu        uint64
	threshold float64 // for reporting: the score above which bins escalate, interpolated
}

func (c *cut) escalates(s float64) bool {
	if c.fixed {
		return s >= c.threshold
	}
	b := binOf(s)
	return b > c.bin || (b == c.bin && c.pu != 0 && rand.Uint64() < c.pu)
}

// calKey is what must stay the same for a calibrator to survive a reload.
type calKey struct {
	target    float64
	window    int
	scorer    string
	modelFile string
}

func keyOf(c config.Routing) calKey {
	w := c.Calibration.Window
	if w <= 0 {
		w = 10000
	}
	if w < minWindow {
		w = minWindow
	}
	s := c.Scorer
	if s == "" {
		s = "learned"
	}
	return calKey{target: c.TargetEscalationRate, window: w, scorer: s, modelFile: c.ModelFile}
}

func binOf(s float64) int {
	if !(s > 0) { // also NaN
		return 0
	}
	if s >= 1 {
		return CalibrationBins - 1
	}
	return int(s * CalibrationBins)
}

// NewCalibrator returns a calibrator for c's target escalation rate, or nil
// when c has a fixed threshold. Window 0 means 10,000; windows below 100 are
// raised to 100. Until its first scores arrive it applies c.Threshold.
func NewCalibrator(c config.Routing) *Calibrator {
	if c.TargetEscalationRate <= 0 || c.TargetEscalationRate >= 1 {
		return nil
	}
	k := keyOf(c)
	bs := k.window / blocksPerWindow
	if bs < 1 {
		bs = 1
	}
	cal := &Calibrator{
		target:  k.target,
		window:  k.window,
		block:   uint64(bs),
		nblocks: (k.window + bs - 1) / bs,
		key:     k,
	}
	cal.ring = make([]*calBlock, 0, cal.nblocks)
	for i := 0; i < cal.nblocks; i++ {
		cal.free = append(cal.free, new(calBlock))
	}
	cal.cur.Store(new(calBlock))
	cal.cut.Store(&cut{fixed: true, threshold: c.Threshold})
	return cal
}

// Matches reports whether c asks for the same calibration (target, window
// and scorer), so the calibrator and its window can be kept across a reload.
func (c *Calibrator) Matches(r config.Routing) bool {
	return c != nil && c.key == keyOf(r)
}

// Target is the escalation rate the calibrator holds.
func (c *Calibrator) Target() float64 { return c.target }

// Window is the number of scores the threshold is computed from.
func (c *Calibrator) Window() int { return c.window }

// Threshold is the current threshold: scores above it escalate.
func (c *Calibrator) Threshold() float64 { return c.cut.Load().threshold }

// Seen is the number of scores observed since the calibrator was created.
func (c *Calibrator) Seen() uint64 { return c.seen.Load() }

// Shifts is how many times a distribution shift dropped the older blocks.
func (c *Calibrator) Shifts() uint64 { return c.shifts.Load() }

// Escalates reports whether score s escalates under the current threshold,
// without observing it.
func (c *Calibrator) Escalates(s float64) bool { return c.cut.Load().escalates(s) }

// Observe adds a score to the window. Lock-free and allocation-free except
// for the one call in window/20 that closes a block and rebuilds the
// threshold.
func (c *Calibrator) Observe(s float64) {
	c.cur.Load().counts[binOf(s)].Add(1)
	n := c.seen.Add(1)
	switch {
	case n%c.block == 0:
		c.rebuild(true)
	case n < c.block && n >= 16 && n&(n-1) == 0:
		// Warm-up: a first estimate from 16, 32, 64, ... scores.
		c.rebuild(false)
	}
}

// Decide observes s and reports whether it escalates: the hot-path call.
func (c *Calibrator) Decide(s float64) (escalate bool, threshold float64) {
	ct := c.cut.Load()
	escalate = ct.escalates(s)
	c.Observe(s)
	return escalate, ct.threshold
}

// rebuild closes the current block when rotate is set, then recomputes the
// threshold from the window (and the fleet).
func (c *Calibrator) rebuild(rotate bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rotate {
		full := c.cur.Load()
		var next *calBlock
		if len(c.ring) == c.nblocks {
			next = c.ring[0]
			c.unseal(next)
			copy(c.ring, c.ring[1:])
			c.ring = c.ring[:len(c.ring)-1]
		} else {
			next = c.free[len(c.free)-1]
			c.free = c.free[:len(c.free)-1]
		}
		next.reset()
		c.cur.Store(next)
		// Scores that land in full after this are not counted: a handful
		// of racing calls at most.
		full.n = 0
		for i := range full.sealed {
			v := full.counts[i].Load()
			full.sealed[i] = v
			full.n += uint64(v)
			c.total[i] += uint64(v)
		}
		c.totalN += full.n
		c.ring = append(c.ring, full)
		c.detectShift()
	}
	c.recompute()
}

// unseal takes a block's sealed counts out of the totals.
func (c *Calibrator) unseal(b *calBlock) {
	for i, v := range b.sealed {
		c.total[i] -= uint64(v)
	}
	c.totalN -= b.n
}

// detectShift compares the newest 1, 2, 4 and 8 blocks with the blocks
// before them: if the threshold of the older ones would escalate a share of
// the newer ones that is off the target by more than shiftZ standard errors,
// the older blocks are dropped. Called with mu held.
func (c *Calibrator) detectShift() {
	n := len(c.ring)
	if n < 2 {
		return
	}
	for i := range c.recent {
		c.recent[i] = 0
	}
	var nr uint64
	done := 0
	for _, m := range [...]int{1, 2, 4, 8} {
		if m >= n {
			break
		}
		for _, b := range c.ring[n-m : n-done] {
			for i, v := range b.sealed {
				c.recent[i] += uint64(v)
			}
			nr += b.n
		}
		done = m
		no := c.totalN - nr
		if nr == 0 || no == 0 {
			continue
		}
		// Walk down from the top until the older blocks' mass reaches the
		// target: that is their threshold; count what the recent blocks
		// escalate under it.
		want := c.target * float64(no)
		var cumOld, escRecent float64
		for k := CalibrationBins - 1; k >= 0; k-- {
			o := float64(c.total[k] - c.recent[k])
			r := float64(c.recent[k])
			if o > 0 && cumOld+o >= want {
				escRecent += r * (want - cumOld) / o
				break
			}
			cumOld += o
			escRecent += r
		}
		rate := escRecent / float64(nr)
		se := math.Sqrt(c.target * (1 - c.target) * (1/float64(nr) + 1/float64(no)))
		if math.Abs(rate-c.target) > shiftZ*se {
			// Keep the newest m blocks; free the rest.
			drop := n - m
			for _, b := range c.ring[:drop] {
				c.unseal(b)
				c.free = append(c.free, b)
			}
			copy(c.ring, c.ring[drop:])
			for i := m; i < n; i++ {
				c.ring[i] = nil
			}
			c.ring = c.ring[:m]
			c.shifts.Add(1)
			return
		}
	}
}

// recompute sets the cut from the local window (completed blocks and the
// partial current one) merged with the fleet. Called with mu held.
func (c *Calibrator) recompute() {
	nl := c.localCounts()
	var bin int
	var p float64
	var ok bool
	if !c.fleetOn {
		bin, p, ok = quantileCut(&c.local, float64(nl), c.target)
	} else {
		wl := 1.0
		if nl > 0 {
			wl = c.localRate / float64(nl)
		}
		var total float64
		for i := range c.merged {
			v := wl*float64(c.local[i]) + c.fleet[i]
			c.merged[i] = v
			total += v
		}
		bin, p, ok = quantileCut(&c.merged, total, c.target)
	}
	if !ok {
		return
	}
	ct := &cut{bin: bin}
	if p > 0 {
		ct.pu = uint64(p * (1 << 63) * 2)
		if ct.pu == 0 {
			ct.pu = 1
		}
	}
	ct.threshold = (float64(bin+1) - p) / CalibrationBins
	c.cut.Store(ct)
}

// localCounts fills c.local with the window's counts and returns their sum.
func (c *Calibrator) localCounts() uint64 {
	cur := c.cur.Load()
	n := c.totalN
	for i := range c.local {
		v := uint64(cur.counts[i].Load())
		c.local[i] = c.total[i] + v
		n += v
	}
	return n
}

// quantileCut finds the bin where the top target share of h's mass starts:
// the mass of the bins above it plus p times its own is target*total, with
// p in [0, 1). bin -1 means every score escalates. ok is false for an empty
// histogram.
func quantileCut[T uint64 | float64](h *[CalibrationBins]T, total, target float64) (bin int, p float64, ok bool) {
	if !(total > 0) {
		return 0, 0, false
	}
	want := target * total
	cum := 0.0
	for k := CalibrationBins - 1; k >= 0; k-- {
		v := float64(h[k])
		if v <= 0 {
			continue
		}
		if cum+v >= want {
			p = (want - cum) / v
			if p >= 1 {
				return k - 1, 0, true
			}
			if p < 0 {
				p = 0
			}
			return k, p, true
		}
		cum += v
	}
	return -1, 0, true
}

// WindowCounts copies the local window histogram into dst (len CalibrationBins) and
// returns its total, for sharing with a fleet.
func (c *Calibrator) WindowCounts(dst []uint32) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.localCounts()
	for i := range dst[:CalibrationBins] {
		v := c.local[i]
		if v > math.MaxUint32 {
			v = math.MaxUint32
		}
		dst[i] = uint32(v)
	}
	return n
}

// Peer is another gateway's calibration window: its histogram (len CalibrationBins)
// and its request rate (scores per second).
type Peer struct {
	Counts []uint32
	Rate   float64
}

// SetFleet makes the threshold the quantile of this gateway's window merged
// with peers', each distribution weighted by its rate, localRate being this
// gateway's. When every rate is 0, every gateway weighs the same.
func (c *Calibrator) SetFleet(localRate float64, peers []Peer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fleet == nil {
		c.fleet = make([]float64, CalibrationBins)
	}
	for i := range c.fleet {
		c.fleet[i] = 0
	}
	allZero := !(localRate > 0)
	for _, p := range peers {
		if p.Rate > 0 {
			allZero = false
		}
	}
	if allZero {
		localRate = 1
	}
	for _, p := range peers {
		if len(p.Counts) < CalibrationBins {
			continue
		}
		var n uint64
		for _, v := range p.Counts[:CalibrationBins] {
			n += uint64(v)
		}
		r := p.Rate
		if allZero {
			r = 1
		}
		if n == 0 || !(r > 0) {
			continue
		}
		w := r / float64(n)
		for i, v := range p.Counts[:CalibrationBins] {
			c.fleet[i] += w * float64(v)
		}
	}
	c.localRate = localRate
	c.fleetOn = true
	c.recompute()
}

// ClearFleet returns to local calibration, e.g. when the fleet's store is
// unreachable.
func (c *Calibrator) ClearFleet() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.fleetOn {
		return
	}
	c.fleetOn = false
	c.recompute()
}
