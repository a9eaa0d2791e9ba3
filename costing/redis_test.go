package costing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/config"
)

const redisAddr = "127.0.0.1:6379"

// testRedis returns a client for the local Redis and a key prefix unique to
// the test; the test's keys are deleted at the end.
func testRedis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis at %s: %v", redisAddr, err)
	}
	prefix := fmt.Sprintf("test:%s:%08x:", t.Name(), rand.Uint32())
	t.Cleanup(func() {
		var keys []string
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		for len(keys) > 0 {
			n := min(len(keys), 500)
			rdb.Del(ctx, keys[:n]...)
			keys = keys[n:]
		}
		rdb.Close()
	})
	return rdb, prefix
}

// recorderClient is a client set up as the recorder wants it.
func recorderClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true,
		DialTimeout: 500 * time.Millisecond, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

func closeRecorder(t testing.TB, r *RedisRecorder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func hgetInts(t testing.TB, rdb *redis.Client, key string) map[string]int64 {
	t.Helper()
	m, err := rdb.HGetAll(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for k, v := range m {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("%s %s = %q", key, k, v)
		}
		out[k] = n
	}
	return out
}

func TestRecorderWritesStreamAndRollups(t *testing.T) {
	rdb, prefix := testRedis(t)
	r := NewRedisRecorder(recorderClient(t, redisAddr), prefix, config.Recorder{BatchSize: 7, FlushInterval: 20 * time.Millisecond})
	at := time.Date(2026, 11, 29, 12, 7, 30, 0, time.UTC)
	const n = 50
	var want [2]struct{ req, esc, errs, in, out, cost, base, energy int64 } // small, large
	for i := 0; i < n; i++ {
		tier, ti := "small", 0
		if i%5 == 0 {
			tier, ti = "large", 1
		}
		rec := Record{Time: at.Add(time.Duration(i) * time.Second), RequestID: fmt.Sprint("req-", i),
			KeyID: fmt.Sprint("k", i%3), Tier: tier, Model: tier + "-model", Endpoint: "http://x/v1",
			Escalated: ti == 1, InputTokens: 100 + i, OutputTokens: 10 + 2*i,
			CostMicroUSD: int64(3 * i), BaselineMicroUSD: int64(30 * i), EnergyMilliWh: int64(i),
			TTFT: 30 * time.Millisecond, Latency: time.Duration(200+i) * time.Millisecond}
		if i%10 == 3 {
			rec.Outcome = OutcomeUpstreamError
		}
		r.Record(rec)
		w := &want[ti]
		w.req++
		if rec.Escalated {
			w.esc++
		}
		if !rec.Outcome.OK() {
			w.errs++
		}
		w.in, w.out = w.in+int64(rec.InputTokens), w.out+int64(rec.OutputTokens)
		w.cost, w.base, w.energy = w.cost+rec.CostMicroUSD, w.base+rec.BaselineMicroUSD, w.energy+rec.EnergyMilliWh
	}
	closeRecorder(t, r)
	if st := r.Stats(); st.Written != n || st.Dropped != 0 || st.Queued != 0 || st.Errors != 0 {
		t.Fatalf("stats %+v, want %d written", st, n)
	}
	ctx := context.Background()
	stream := prefix + "req:20261129"
	entries, err := rdb.XRange(ctx, stream, "-", "+").Result()
	if err != nil || len(entries) != n {
		t.Fatalf("stream has %d entries (%v), want %d", len(entries), err, n)
	}
	// Batches go out over two connections, so entries are in time order
	// within a batch only.
	var e map[string]any
	for _, x := range entries {
		if x.Values["id"] == "req-0" {
			e = x.Values
		}
	}
	if e["id"] != "req-0" || e["tier"] != "large" || e["key"] != "k0" || e["escalated"] != "1" ||
		e["input_tokens"] != "100" || e["latency_ms"] != "200" || e["ttft_ms"] != "30" || e["outcome"] != "served" ||
		e["ts"] != strconv.FormatInt(at.UnixMilli(), 10) {
		t.Fatalf("first entry %v", e)
	}
	if ttl := rdb.TTL(ctx, stream).Val(); ttl <= 29*24*time.Hour {
		t.Errorf("stream TTL %v, want the 30-day retention", ttl)
	}

	// Hour rollups by tier, and their sum in the total, minute rollups
	// summing to the hour.
	var total [nFields]int64
	for ti, tier := range []string{"small", "large"} {
		h := hgetInts(t, rdb, prefix+"h:tier:"+tier+":2026112912")
		w := want[ti]
		got := [...]int64{h["requests"], h["escalations"], h["errors"], h["input_tokens"], h["output_tokens"],
			h["cost_uusd"], h["baseline_uusd"], h["energy_mwh"]}
		exp := [...]int64{w.req, w.esc, w.errs, w.in, w.out, w.cost, w.base, w.energy}
		if got != exp {
			t.Errorf("%s hour rollup %v, want %v", tier, got, exp)
		}
		// 200..249 ms latencies fall in (100, 250]; 30 ms TTFT in (25, 50].
		if h["lat_b"+strconv.Itoa(bucketOf(200*time.Millisecond))] != w.req || h["ttft_b3"] != w.req {
			t.Errorf("%s histogram %v", tier, h)
		}
		for i, v := range exp {
			total[i] += v
		}
	}
	all := hgetInts(t, rdb, prefix+"h:all:2026112912")
	if all["requests"] != n || all["cost_uusd"] != total[fCost] || all["baseline_uusd"] != total[fBaseline] ||
		all["energy_mwh"] != total[fEnergy] || all["output_tokens"] != total[fOutputTokens] {
		t.Errorf("total hour rollup %v, want sums %v", all, total)
	}
	var minutes int64
	for _, m := range []string{"202611291207", "202611291208"} {
		minutes += hgetInts(t, rdb, prefix+"m:all:"+m)["requests"]
	}
	if minutes != n {
		t.Errorf("minute rollups hold %d requests, want %d", minutes, n)
	}
	if ttl := rdb.TTL(ctx, prefix+"m:all:202611291207").Val(); ttl <= 0 || ttl > MinuteRetention {
		t.Errorf("minute rollup TTL %v", ttl)
	}
	var keySum int64
	for _, k := range []string{"k0", "k1", "k2"} {
		keySum += hgetInts(t, rdb, prefix+"h:key:"+k+":2026112912")["requests"]
	}
	if keySum != n {
		t.Errorf("key rollups hold %d requests, want %d", keySum, n)
	}
	if got := rdb.SMembers(ctx, prefix+"ix:model:2026112912").Val(); len(got) != 2 {
		t.Errorf("model index %v, want small-model and large-model", got)
	}
}

func TestRecorderDropsWhenQueueFull(t *testing.T) {
	// Nothing listens on the port: every flush fails.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	logs := captureLogs(t)
	r := NewRedisRecorder(recorderClient(t, addr), "test:", config.Recorder{QueueSize: 10, BatchSize: 1, FlushInterval: 10 * time.Millisecond})
	const n = 200
	for i := 0; i < n; i++ {
		r.Record(Record{RequestID: strconv.Itoa(i)})
	}
	st := r.Stats()
	// At most the queue, the batch being built and one per writer were
	// accepted; at least the queue.
	if st.Dropped < n-10-1-writers || st.Dropped > n-10 {
		t.Fatalf("dropped %d of %d with a queue of 10", st.Dropped, n)
	}
	waitFor(t, "retries", func() bool { return r.Stats().Errors >= 4 })
	if got := r.Stats().Dropped; got != st.Dropped {
		t.Fatalf("queued records dropped while retrying: %d, then %d", st.Dropped, got)
	}
	// Close's deadline ends the retries: what is left is counted.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := r.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v, want the deadline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v with a 300ms deadline", d)
	}
	st = r.Stats()
	if st.Written != 0 || st.Dropped != n || st.Queued != 0 || st.Errors == 0 {
		t.Fatalf("after close: %+v; want all %d dropped, flush errors counted", st, n)
	}
	r.Record(Record{}) // after Close: counted, not queued
	if r.Stats().Dropped != n+1 {
		t.Fatalf("record after close not counted")
	}
	if lost := logs.find(msgLost); len(lost) != 1 || lost[0]["err"] == nil || lost[0]["queue_size"] != int64(10) {
		t.Fatalf("lost lines %v, want one with err and queue_size", lost)
	}
	if back := logs.find(msgBack); len(back) != 0 {
		t.Fatalf("back lines %v while Redis never answered", back)
	}
}

// Close with a deadline writes what it can and counts the rest; a batch in
// flight at the deadline may be in Redis although counted as dropped.
func TestRecorderCloseDeadlineCountsTheRest(t *testing.T) {
	rdb, prefix := testRedis(t)
	const n = 100_000
	r := NewRedisRecorder(recorderClient(t, redisAddr), prefix, config.Recorder{QueueSize: n, BatchSize: 512, FlushInterval: time.Hour})
	now := time.Now()
	for i := 0; i < n; i++ {
		r.Record(Record{Time: now, Tier: "small", OutputTokens: 1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := r.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v, want the deadline (the machine wrote %d records in 200ms?)", err, r.Stats().Written)
	}
	st := r.Stats()
	t.Logf("after a 200ms drain: %+v", st)
	if st.Written == 0 || st.Dropped == 0 || st.Written+st.Dropped != n || st.Queued != 0 {
		t.Fatalf("stats %+v, want some written, the rest of %d dropped", st, n)
	}
	got := rdb.XLen(context.Background(), prefix+"req:"+now.UTC().Format("20060102")).Val()
	if got < st.Written || got > st.Written+writers*512 {
		t.Fatalf("stream holds %d entries, recorder wrote %d", got, st.Written)
	}
}

// Close keeps retrying while Redis is away, until its deadline.
func TestRecorderCloseWaitsForRedis(t *testing.T) {
	rdb, prefix := testRedis(t)
	px := newProxy(t, redisAddr)
	px.cut()
	r := NewRedisRecorder(recorderClient(t, px.addr), prefix, config.Recorder{BatchSize: 100, FlushInterval: 10 * time.Millisecond})
	now := time.Now()
	for i := 0; i < 3000; i++ {
		r.Record(Record{Time: now, Tier: "small", OutputTokens: 1})
	}
	waitFor(t, "flush errors", func() bool { return r.Stats().Errors > 0 })
	time.AfterFunc(500*time.Millisecond, px.restore)
	closeRecorder(t, r)
	if st := r.Stats(); st.Written != 3000 || st.Dropped != 0 || st.Queued != 0 {
		t.Fatalf("stats after close %+v", st)
	}
	if got := rdb.XLen(context.Background(), prefix+"req:"+now.UTC().Format("20060102")).Val(); got != 3000 {
		t.Fatalf("stream has %d entries, want 3000", got)
	}
}

func TestRecorderCloseDrains(t *testing.T) {
	rdb, prefix := testRedis(t)
	// A flush interval far beyond the test: only Close can write.
	r := NewRedisRecorder(recorderClient(t, redisAddr), prefix, config.Recorder{QueueSize: 5000, BatchSize: 100000, FlushInterval: time.Hour})
	now := time.Now()
	for i := 0; i < 3000; i++ {
		r.Record(Record{Time: now, Tier: "small", OutputTokens: 1})
	}
	closeRecorder(t, r)
	if st := r.Stats(); st.Written != 3000 || st.Dropped != 0 {
		t.Fatalf("stats after close %+v", st)
	}
	if got := rdb.XLen(context.Background(), prefix+"req:"+now.UTC().Format("20060102")).Val(); got != 3000 {
		t.Fatalf("stream has %d entries, want 3000", got)
	}
}

// proxy forwards TCP to a target and can be cut and restored on the same
// address. It can also lose replies: while loseReplies > 0, a connection
// that sends a script call (EVAL or EVALSHA) is closed when Redis answers it,
// and the answer thrown away.
type proxy struct {
	t           testing.TB
	addr        string
	target      string
	loseReplies atomic.Int32
	lost        atomic.Int32 // replies lost
	lostApplied atomic.Int32 // of which said the batch was applied
	mu          sync.Mutex   // guards ln and conns
	ln          net.Listener
	conns       map[net.Conn]struct{}
	wg          sync.WaitGroup
}

func newProxy(t testing.TB, target string) *proxy {
	p := &proxy{t: t, target: target, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() { p.cut(); p.wg.Wait() })
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[u] = struct{}{}, struct{}{}
			p.mu.Unlock()
			var lose atomic.Bool
			p.wg.Add(2)
			go func() { // client to Redis
				defer p.wg.Done()
				defer u.Close()
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 && !lose.Load() && bytes.Contains(bytes.ToLower(buf[:n]), []byte("eval")) &&
						p.loseReplies.Add(-1) >= 0 {
						lose.Store(true)
						p.lost.Add(1)
					}
					if n > 0 {
						if _, err := u.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() { // Redis to client
				defer p.wg.Done()
				defer u.Close()
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := u.Read(buf)
					if n > 0 && lose.Load() {
						if bytes.HasPrefix(buf[:n], []byte("*3\r\n:1\r\n")) {
							p.lostApplied.Add(1)
						}
						return
					}
					if n > 0 {
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
}

// cut closes the listener and every connection: Redis looks down.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// restore listens again on the same address.
func (p *proxy) restore() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRecorderSurvivesRedisOutage(t *testing.T) {
	rdb, prefix := testRedis(t)
	px := newProxy(t, redisAddr)
	logs := captureLogs(t)
	const queue, batch = 64, 16
	r := NewRedisRecorder(recorderClient(t, px.addr), prefix, config.Recorder{QueueSize: queue, BatchSize: batch, FlushInterval: 10 * time.Millisecond})
	now := time.Now()
	rec := Record{Time: now, Tier: "small", OutputTokens: 3, CostMicroUSD: 2}
	accepted := 0
	send := func(k int) {
		for i := 0; i < k; i++ {
			r.Record(rec)
			accepted++
		}
	}
	send(40)
	waitFor(t, "the first records to be written", func() bool { return r.Stats().Written == 40 })

	// Redis is gone: what fits in the queue waits, however many flushes
	// fail, and is written when Redis is back.
	px.cut()
	send(60)
	waitFor(t, "several failed flushes", func() bool { return r.Stats().Errors >= 6 })
	if st := r.Stats(); st.Dropped != 0 || st.Queued != 60 {
		t.Fatalf("during the outage: %+v; want 60 queued, none dropped", st)
	}
	px.restore()
	waitFor(t, "the queued records", func() bool { return r.Stats().Written == 100 })
	lost, back := logs.find(msgLost), logs.find(msgBack)
	if len(lost) != 1 || len(back) != 1 {
		t.Fatalf("%d lost and %d back lines for one outage:\n%v\n%v", len(lost), len(back), lost, back)
	}
	if d, _ := back[0]["down_for"].(time.Duration); d <= 0 || back[0]["queued"] == nil ||
		back[0]["dropped"] != int64(0) || back[0]["failed_flushes"].(int64) < 6 {
		t.Fatalf("back line %v", back[0])
	}

	// Down again, and more than the queue holds: the rest is dropped and
	// counted.
	px.cut()
	send(1)
	waitFor(t, "a failed flush", func() bool { return len(logs.find(msgLost)) == 2 })
	for i := 0; i < 20; i++ {
		send(50)
		time.Sleep(5 * time.Millisecond)
	}
	down := r.Stats()
	t.Logf("during the second outage: %+v", down)
	// Held while Redis is away: the queue, the batch waiting for a writer
	// and one batch per writer.
	if held := queue + batch + writers*batch; down.Dropped < int64(1001-held) || down.Dropped > 1001-queue {
		t.Fatalf("dropped %d of 1001 with %d to %d held", down.Dropped, queue, held)
	}
	px.restore()
	waitFor(t, "the queue to empty", func() bool { return r.Stats().Queued == 0 })
	closeRecorder(t, r)
	st := r.Stats()
	t.Logf("after recovery: %+v", st)
	if st.Written+st.Dropped != int64(accepted) || st.Dropped != down.Dropped {
		t.Fatalf("written %d + dropped %d != %d recorded", st.Written, st.Dropped, accepted)
	}
	if back := logs.find(msgBack); len(back) != 2 || back[1]["dropped"] != st.Dropped {
		t.Fatalf("back lines %v, want the second to count %d dropped", back, st.Dropped)
	}
	ctx := context.Background()
	if got := rdb.XLen(ctx, prefix+"req:"+now.UTC().Format("20060102")).Val(); got != st.Written {
		t.Fatalf("stream holds %d entries, recorder wrote %d", got, st.Written)
	}
	h := hgetInts(t, rdb, prefix+"h:all:"+now.UTC().Format("2006010215"))
	if h["requests"] != st.Written || h["cost_uusd"] != 2*st.Written {
		t.Fatalf("rollup %v, want %d requests", h, st.Written)
	}
}

// A batch whose reply is lost is sent again and skipped by Redis if it was
// applied: nothing is counted twice, nothing lost.
func TestRecorderLostRepliesCountOnce(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := context.Background()
	// Loaded, so that the first EVALSHA of a batch is applied (not NOSCRIPT).
	if err := applyScript.Load(ctx, rdb).Err(); err != nil {
		t.Fatal(err)
	}
	px := newProxy(t, redisAddr)
	px.loseReplies.Store(4)
	r := NewRedisRecorder(recorderClient(t, px.addr), prefix, config.Recorder{BatchSize: 10, FlushInterval: 5 * time.Millisecond})
	now := time.Now()
	const n = 200
	for i := 0; i < n; i++ {
		r.Record(Record{Time: now, RequestID: fmt.Sprint("req-", i), Tier: "small", CostMicroUSD: 3})
		if i%10 == 9 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	closeRecorder(t, r)
	st := r.Stats()
	if st.Written != n || st.Dropped != 0 || st.Errors < 4 {
		t.Fatalf("stats %+v, want %d written after at least 4 lost replies", st, n)
	}
	if px.lostApplied.Load() == 0 {
		t.Fatal("no lost reply was of an applied batch: the test proves nothing")
	}
	t.Logf("%d replies lost, %d of them of applied batches; %+v", px.lost.Load(), px.lostApplied.Load(), st)
	assertStream(t, rdb, prefix+"req:"+now.UTC().Format("20060102"), n)
	if h := hgetInts(t, rdb, prefix+"h:all:"+now.UTC().Format("2006010215")); h["requests"] != n || h["cost_uusd"] != 3*n {
		t.Fatalf("rollup %v, want %d requests", h, n)
	}
}

// assertStream checks that stream holds exactly the records req-0 ..
// req-{n-1}, once each.
func assertStream(t testing.TB, rdb *redis.Client, stream string, n int) {
	t.Helper()
	entries, err := rdb.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]int, len(entries))
	for _, e := range entries {
		id, _ := e.Values["id"].(string)
		seen[id]++
	}
	var dup, missing []string
	for id, c := range seen {
		if c > 1 {
			dup = append(dup, fmt.Sprintf("%s×%d", id, c))
		}
	}
	for i := 0; i < n; i++ {
		if seen[fmt.Sprint("req-", i)] == 0 {
			missing = append(missing, fmt.Sprint("req-", i))
		}
	}
	if len(entries) != n || len(dup) > 0 || len(missing) > 0 {
		t.Fatalf("stream has %d entries, want %d; duplicates %v; missing %v", len(entries), n, head(dup), head(missing))
	}
}

func head(s []string) []string { return s[:min(len(s), 10)] }

const (
	msgLost = "recorder lost redis"
	msgBack = "recorder reached redis again"
)

// logCapture is a slog handler that keeps what is logged.
type logCapture struct {
	mu   sync.Mutex // guards recs
	recs []slog.Record
}

// captureLogs makes a logCapture the default logger until the test ends;
// recorders made meanwhile log to it.
func captureLogs(t testing.TB) *logCapture {
	h := &logCapture{}
	old := slog.Default()
	slog.SetDefault(slog.New(h))
	t.Cleanup(func() { slog.SetDefault(old) })
	return h
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCapture) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logCapture) WithGroup(string) slog.Handler            { return h }

func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

// find returns the attributes of the lines whose message starts with msg.
func (h *logCapture) find(msg string) []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]any
	for _, r := range h.recs {
		if strings.HasPrefix(r.Message, msg) {
			m := map[string]any{"level": r.Level}
			r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
			out = append(out, m)
		}
	}
	return out
}

// BenchmarkRecorder writes records into the local Redis through the
// recorder and reports records/s (end to end, until written) and the
// process CPU used per wall second.
func BenchmarkRecorder(b *testing.B) {
	b.ReportAllocs()
	_, prefix := testRedis(b)
	r := NewRedisRecorder(recorderClient(b, redisAddr), prefix, config.Recorder{})
	rec := Record{Time: time.Now(), RequestID: "0123456789abcdef0123456789abcdef", KeyID: "a1b2c3d4e5f60718",
		Tier: "small", Model: "llama-3.1-8b-instruct", Endpoint: "http://10.0.0.7:8000/v1", Stream: true,
		Score: 0.31, InputTokens: 812, OutputTokens: 230, CostMicroUSD: 43, BaselineMicroUSD: 346,
		EnergyMilliWh: 10, TTFT: 42 * time.Millisecond, Latency: 1310 * time.Millisecond}
	cpu0 := cpuTime()
	start := time.Now()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// Keep within the queue: the benchmark measures writing, not dropping.
		for len(r.q) > cap(r.q)-1024 {
			time.Sleep(100 * time.Microsecond)
		}
		rec.Latency = time.Duration(i%4000) * time.Millisecond
		r.Record(rec)
	}
	closeRecorder(b, r)
	b.StopTimer()
	wall := time.Since(start)
	st := r.Stats()
	if st.Dropped != 0 {
		b.Fatalf("dropped %d", st.Dropped)
	}
	b.ReportMetric(float64(st.Written)/wall.Seconds(), "records/s")
	b.ReportMetric((cpuTime()-cpu0).Seconds()/wall.Seconds(), "cores")
}

// cpuTime is the user and system CPU time of this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
