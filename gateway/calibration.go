package gateway

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/router"
)

// Fleet calibration: with a target escalation rate and Redis, every gateway
// publishes its calibration window (a histogram of recent scores) and its
// request rate every routing.calibration.sync_every, and sets its threshold
// from all live gateways' histograms merged, so the fleet together escalates
// the target share. Keys, under redis.prefix:
//
//	calib:instances  a set of the gateways' instance ids
//	calib:i:{id}     one gateway's window, expiring after 3 sync periods
//
// The verifier's threshold in the cascade modes, when it follows
// routing.cascade.target_escalation_rate, is shared the same way under
// verifier:calib:instances and verifier:calib:i:{id}.
//
// It runs off the request path. When Redis fails, each gateway keeps
// calibrating on its own traffic; failures are counted and logged once per
// outage.

// calibPeerTTL is how many sync periods a gateway's window outlives its last
// write: a gateway that stops is out of the merge within that.
const calibPeerTTL = 3

// calibVersion tags the encoded window.
const calibVersion = 1

// calibSync shares one gateway's calibration through Redis.
type calibSync struct {
	rdb redis.UniversalClient
	id  string
	now func() time.Time
	// current returns what to sync now (it follows config reloads): the
	// calibrator (nil when none), the key prefix, the period and whether
	// sharing is on.
	current func() (cal *router.Calibrator, prefix string, every time.Duration, shared bool)

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}

	syncs  atomic.Uint64 // successful exchanges
	errors atomic.Uint64 // failed exchanges
	peers  atomic.Int64  // live peers merged at the last exchange

	// Touched only by the sync goroutine (or a test calling sync directly).
	lastCal   *router.Calibrator
	lastSeen  uint64
	lastAt    time.Time
	rate      float64 // scores per second, smoothed
	lastOK    time.Time
	failing   bool
	published string // the key written last, deleted on stop
	buf       []uint32
	enc       []byte
}

// CalibrationStatus reports the fleet calibration, e.g. for /admin/stats.
type CalibrationStatus struct {
	// Shared is true when this gateway exchanges its window through Redis.
	Shared bool `json:"shared"`
	// Instance is this gateway's id in the fleet.
	Instance string `json:"instance,omitempty"`
	// Peers is how many other gateways' windows the last exchange merged.
	Peers int64 `json:"peers"`
	// Syncs and Errors count exchanges that succeeded and failed.
	Syncs  uint64 `json:"syncs"`
	Errors uint64 `json:"errors"`
}

// CalibrationStatus reports the state of the fleet calibration.
func (g *Gateway) CalibrationStatus() CalibrationStatus {
	cs := g.calib
	if cs == nil {
		return CalibrationStatus{}
	}
	cal, _, _, shared := cs.current()
	return CalibrationStatus{Shared: shared && cal != nil, Instance: cs.id, Peers: cs.peers.Load(),
		Syncs: cs.syncs.Load(), Errors: cs.errors.Load()}
}

// newInstanceID names this gateway in the fleet: host, pid and a random
// suffix, so restarts do not collide with their own stale windows.
func newInstanceID() string {
	host, _ := os.Hostname()
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// startCalibSync starts sharing g's calibration through opts.Redis; nil when
// the gateway has no Redis.
//
// judge selects the verifier's calibrator (keys under "verifier:") instead
// of the prompt threshold's.
func startCalibSync(g *Gateway, id string, judge bool) *calibSync {
	if g.opts.Redis == nil {
		return nil
	}
	cs := newCalibSync(g.opts.Redis, id, g.now, func() (*router.Calibrator, string, time.Duration, bool) {
		s := g.snap.Load()
		c := s.cfg
		cal, prefix := s.policy.Calibrator(), c.Redis.Prefix
		if judge {
			cal, prefix = s.policy.JudgeCalibrator(), prefix+"verifier:"
		}
		return cal, prefix, c.Routing.Calibration.SyncEvery, c.Routing.Calibration.Shared
	})
	go cs.run()
	return cs
}

func newCalibSync(rdb redis.UniversalClient, id string, now func() time.Time,
	current func() (*router.Calibrator, string, time.Duration, bool)) *calibSync {
	return &calibSync{rdb: rdb, id: id, now: now, current: current,
		stop: make(chan struct{}), done: make(chan struct{}),
		buf: make([]uint32, router.CalibrationBins)}
}

func (cs *calibSync) run() {
	defer close(cs.done)
	for {
		_, _, every, _ := cs.current()
		if every <= 0 {
			every = time.Second
		}
		t := time.NewTimer(every)
		select {
		case <-cs.stop:
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		cs.sync(ctx)
		cancel()
	}
}

// close stops the loop and removes this gateway's window from Redis, so the
// fleet stops counting it at once. Safe on nil.
func (cs *calibSync) close(ctx context.Context) {
	if cs == nil {
		return
	}
	cs.stopOnce.Do(func() { close(cs.stop) })
	select {
	case <-cs.done:
	case <-ctx.Done():
		return
	}
	if cs.published != "" {
		_, prefix, _, _ := cs.current()
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		cs.rdb.Pipelined(dctx, func(p redis.Pipeliner) error {
			p.Del(dctx, cs.published)
			p.SRem(dctx, prefix+"calib:instances", cs.id)
			return nil
		})
	}
}

// sync does one exchange: publish this gateway's window and rate, read the
// live peers' and hand them to the calibrator.
func (cs *calibSync) sync(ctx context.Context) error {
	cal, prefix, every, shared := cs.current()
	if every <= 0 {
		every = time.Second
	}
	now := cs.now()
	if cal != cs.lastCal { // a new calibration (first run, or a reload changed it)
		cs.lastCal, cs.lastSeen, cs.lastAt, cs.rate = cal, 0, now, 0
		if cal != nil {
			cs.lastSeen = cal.Seen()
		}
	}
	if cal == nil || !shared {
		return nil
	}
	seen := cal.Seen()
	measured := false
	if dt := now.Sub(cs.lastAt).Seconds(); dt > 0 {
		measured = true
		inst := float64(seen-cs.lastSeen) / dt
		if cs.rate == 0 {
			cs.rate = inst
		} else {
			cs.rate = 0.5*cs.rate + 0.5*inst
		}
		cs.lastSeen, cs.lastAt = seen, now
	}
	err := cs.exchange(ctx, cal, prefix, every, measured || cs.rate > 0)
	if err == nil {
		cs.syncs.Add(1)
		cs.lastOK = now
		if cs.failing {
			cs.failing = false
			slog.Info("calibration: fleet sync through Redis restored", "instance", cs.id)
		}
		return nil
	}
	cs.errors.Add(1)
	if !cs.failing {
		cs.failing = true
		slog.Warn("calibration: fleet sync through Redis failed; calibrating on local traffic", "instance", cs.id, "err", err)
	}
	// Peers' windows age out of Redis after calibPeerTTL periods; do the
	// same locally.
	if now.Sub(cs.lastOK) > calibPeerTTL*every {
		cal.ClearFleet()
		cs.peers.Store(0)
	}
	return err
}

// exchange publishes the window and, when merge is set (this gateway's rate
// is known), merges the peers' windows into the calibration.
func (cs *calibSync) exchange(ctx context.Context, cal *router.Calibrator, prefix string, every time.Duration, merge bool) error {
	cal.WindowCounts(cs.buf)
	cs.enc = encodeWindow(cs.enc[:0], cs.rate, cs.buf)
	setKey := prefix + "calib:instances"
	own := prefix + "calib:i:" + cs.id
	ttl := calibPeerTTL * every
	var members *redis.StringSliceCmd
	_, err := cs.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, own, cs.enc, ttl)
		p.SAdd(ctx, setKey, cs.id)
		p.PExpire(ctx, setKey, 10*ttl)
		members = p.SMembers(ctx, setKey)
		return nil
	})
	if err != nil {
		return err
	}
	cs.published = own
	if !merge {
		return nil
	}
	var ids []string
	for _, m := range members.Val() {
		if m != cs.id {
			ids = append(ids, m)
		}
	}
	peers := make([]router.Peer, 0, len(ids))
	if len(ids) > 0 {
		gets := make([]*redis.StringCmd, len(ids))
		_, err = cs.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				gets[i] = p.Get(ctx, prefix+"calib:i:"+id)
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		var gone []any
		for i, g := range gets {
			b, gerr := g.Bytes()
			if errors.Is(gerr, redis.Nil) {
				gone = append(gone, ids[i])
				continue
			}
			rate, counts, derr := decodeWindow(b)
			if gerr != nil || derr != nil {
				continue // a gateway of another version: leave it out
			}
			peers = append(peers, router.Peer{Counts: counts, Rate: rate})
		}
		if len(gone) > 0 { // expired windows: prune the set
			cs.rdb.SRem(ctx, setKey, gone...)
		}
	}
	cal.SetFleet(cs.rate, peers)
	cs.peers.Store(int64(len(peers)))
	return nil
}

// encodeWindow appends a window: version, rate (float64), bin count, then
// each bin's count as a uvarint (mostly one byte).
func encodeWindow(dst []byte, rate float64, counts []uint32) []byte {
	dst = append(dst, calibVersion)
	dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(rate))
	dst = binary.AppendUvarint(dst, uint64(len(counts)))
	for _, c := range counts {
		dst = binary.AppendUvarint(dst, uint64(c))
	}
	return dst
}

var errBadWindow = errors.New("calibration: malformed window")

func decodeWindow(b []byte) (rate float64, counts []uint32, err error) {
	if len(b) < 10 || b[0] != calibVersion {
		return 0, nil, errBadWindow
	}
	rate = math.Float64frombits(binary.LittleEndian.Uint64(b[1:9]))
	b = b[9:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n != router.CalibrationBins {
		return 0, nil, errBadWindow
	}
	b = b[k:]
	counts = make([]uint32, n)
	for i := range counts {
		v, k := binary.Uvarint(b)
		if k <= 0 || v > math.MaxUint32 {
			return 0, nil, errBadWindow
		}
		counts[i] = uint32(v)
		b = b[k:]
	}
	if math.IsNaN(rate) || math.IsInf(rate, 0) || rate < 0 {
		rate = 0
	}
	return rate, counts, nil
}
