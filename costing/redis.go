package costing

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/config"
)

// Redis layout, all keys under the configured prefix (default "cascade:"),
// times in UTC:
//
//	req:{YYYYMMDD}                      stream, one entry per request, XADD
//	                                    MAXLEN ~ stream_max_len, expires after
//	                                    retention
//	m:{dim}:{value}:{YYYYMMDDHHmm}      hash, per-minute rollup, expires after
//	                                    min(retention, MinuteRetention)
//	h:{dim}:{value}:{YYYYMMDDHH}        hash, per-hour rollup, expires after
//	                                    retention
//	m:all:{YYYYMMDDHHmm}, h:all:{YYYYMMDDHH}
//	                                    the same rollups over all requests
//	ix:{dim}:{YYYYMMDDHH}               set of the values of dim seen in that
//	                                    hour, expires after retention; read
//	                                    back needs no SCAN
//
// dim is tier, model or key (the API key's hash); a missing value is "none".
// A record lands in the minute and hour of its start time. Rollup fields are
// counters (HINCRBY): see RollupFields and LatencyBucketsMs.

// MinuteRetention bounds how long per-minute rollups live: stats windows up
// to 6h read them, longer windows read the hourly ones.
const MinuteRetention = 48 * time.Hour

// LatencyBucketsMs are the upper bounds, in milliseconds, of the latency and
// time-to-first-token histograms kept in the rollups. Field lat_b{i} counts
// requests whose latency was at most LatencyBucketsMs[i] and more than the
// bound before it; lat_b{len} counts the rest. ttft_b{i} likewise.
var LatencyBucketsMs = [...]int64{5, 10, 25, 50, 100, 250, 500, 750, 1000, 1500,
	2500, 4000, 6000, 10000, 15000, 30000, 60000, 120000}

const nBuckets = len(LatencyBucketsMs) + 1

// Rollup counters, in field order.
const (
	fRequests = iota
	fEscalations
	fErrors
	fInputTokens
	fOutputTokens
	fCost
	fBaseline
	fEnergy
	fFallbacks
	fDegraded
	fClientErrors
	fCancelled
	fRejected
	fLat0
	fTTFT0  = fLat0 + nBuckets
	nFields = fTTFT0 + nBuckets
)

// RollupFields are the hash fields of a rollup, indexed as above: requests,
// escalations (the router's decisions only), errors (failed outcomes:
// upstream_error, timeout, invalid_response, shutdown), input_tokens,
// output_tokens, cost_uusd, baseline_uusd (micro-USD), energy_mwh (milli-Wh),
// fallbacks_up, degraded_down (served on another tier than the router chose),
// client_errors, cancelled, rejected, then lat_b0.., then ttft_b0.. (ttft only for requests that got a first byte).
var RollupFields = func() [nFields]string {
	var f [nFields]string
	copy(f[:], []string{"requests", "escalations", "errors", "input_tokens", "output_tokens",
		"cost_uusd", "baseline_uusd", "energy_mwh", "fallbacks_up", "degraded_down", "client_errors",
		"cancelled", "rejected"})
	for i := 0; i < nBuckets; i++ {
		f[fLat0+i] = "lat_b" + strconv.Itoa(i)
		f[fTTFT0+i] = "ttft_b" + strconv.Itoa(i)
	}
	return f
}()

// Dims are the dimensions rollups are kept by, besides the total.
var Dims = [...]string{"tier", "model", "key"}

func bucketOf(d time.Duration) int {
	ms := d.Milliseconds()
	for i, b := range LatencyBucketsMs {
		if ms <= b {
			return i
		}
	}
	return len(LatencyBucketsMs)
}

// RecorderStats counts what the recorder did since it started.
type RecorderStats struct {
	Queued  int64 `json:"queued"`  // accepted, not yet written or dropped
	Dropped int64 `json:"dropped"` // lost: queue full, flush failed for good, or not drained at Close
	Written int64 `json:"written"` // in Redis
	Errors  int64 `json:"errors"`  // failed flush attempts
}

// StatsReporter is implemented by recorders that count their work.
type StatsReporter interface {
	Stats() RecorderStats
}

// writers is how many pipelines may be in flight at once: one is built
// while another waits for Redis.
const writers = 2

// flushAttempts bounds how often a batch's commands are sent before its
// records are counted as dropped.
const flushAttempts = 5

// RedisRecorder writes records to Redis off the request path. Record puts a
// copy in a bounded queue and returns at once; a flusher sends batches as
// pipelines every flush interval or batch size records. When Redis is slow or
// down the queue fills and further records are dropped and counted; a batch
// that could not reach Redis is re-sent up to 5 times with backoff before its
// records are counted as dropped; a batch that went out but whose replies
// were lost (timeout, broken connection) is counted as dropped at once, since
// re-sending it could count its records twice. The client reconnects by itself.
//
// The client should be dedicated to the recorder with MaxRetries -1 (the
// recorder retries, per command, and a client-level retry of a whole
// pipeline could count a batch twice) and ContextTimeoutEnabled.
type RedisRecorder struct {
	rdb      redis.UniversalClient
	prefix   string
	interval time.Duration
	batch    int
	maxLen   int64
	ttl      time.Duration
	minTTL   time.Duration
	timeout  time.Duration // per flush attempt

	q       chan Record
	jobs    chan job
	closed  atomic.Bool
	closing chan struct{}
	done    chan struct{}
	stopCtx context.Context // Close's context, set before closing is closed
	// runCtx bounds normal flushes; cancelled when Close's context ends.
	runCtx    context.Context
	cancelRun context.CancelFunc

	inFlight, dropped, written, errors atomic.Int64

	// Flusher state, reused across batches.
	agg   map[aggKey]*[nFields]int64
	index map[indexKey]struct{}
	names timeNames
}

// NewRedisRecorder starts a recorder writing under prefix with the tuning in
// c (zero fields take config defaults).
func NewRedisRecorder(rdb redis.UniversalClient, prefix string, c config.Recorder) *RedisRecorder {
	d := config.Default().Recorder
	if c.QueueSize <= 0 {
		c.QueueSize = d.QueueSize
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = d.FlushInterval
	}
	if c.BatchSize <= 0 {
		c.BatchSize = d.BatchSize
	}
	if c.StreamMaxLen <= 0 {
		c.StreamMaxLen = d.StreamMaxLen
	}
	if c.Retention <= 0 {
		c.Retention = d.Retention
	}
	r := &RedisRecorder{
		rdb: rdb, prefix: prefix, interval: c.FlushInterval, batch: c.BatchSize,
		maxLen: int64(c.StreamMaxLen), ttl: c.Retention, minTTL: min(c.Retention, MinuteRetention),
		timeout: max(5*time.Second, 5*c.FlushInterval),
		q:       make(chan Record, c.QueueSize),
		jobs:    make(chan job),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		agg:     map[aggKey]*[nFields]int64{},
		index:   map[indexKey]struct{}{},
	}
	r.runCtx, r.cancelRun = context.WithCancel(context.Background())
	go r.run()
	return r
}

// Record implements Recorder. It never blocks.
func (r *RedisRecorder) Record(rec Record) {
	if r.closed.Load() {
		r.dropped.Add(1)
		return
	}
	select {
	case r.q <- rec:
	default:
		r.dropped.Add(1)
	}
}

// Stats implements StatsReporter.
func (r *RedisRecorder) Stats() RecorderStats {
	return RecorderStats{
		Queued:  int64(len(r.q)) + r.inFlight.Load(),
		Dropped: r.dropped.Load(),
		Written: r.written.Load(),
		Errors:  r.errors.Load(),
	}
}

// Close stops taking records and writes the queued ones until ctx ends;
// what is left then is counted as dropped and ctx's error returned.
func (r *RedisRecorder) Close(ctx context.Context) error {
	if r.closed.Swap(true) { // closed before: wait for that drain
		select {
		case <-r.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.stopCtx = ctx
	close(r.closing)
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		r.cancelRun() // abandon flushes in progress
		return ctx.Err()
	}
}

func (r *RedisRecorder) run() {
	defer close(r.done)
	defer r.cancelRun()
	var wg sync.WaitGroup
	for range writers {
		wg.Go(r.write)
	}
	defer wg.Wait()
	defer close(r.jobs)
	tick := time.NewTicker(r.interval)
	defer tick.Stop()
	batch := make([]Record, 0, r.batch)
	for {
		select {
		case rec := <-r.q:
			r.inFlight.Add(1)
			batch = append(batch, rec)
			if len(batch) >= r.batch {
				batch = r.send(batch)
			}
		case <-tick.C:
			if len(batch) > 0 {
				batch = r.send(batch)
			}
		case <-r.closing:
			r.drain(r.stopCtx, batch)
			return
		}
	}
}

// job is the commands of one batch of n records.
type job struct {
	cmds [][]any
	n    int64
}

// send turns batch into a job for the writers and returns it emptied for
// reuse. It waits while both writers are busy: the queue buffers meanwhile.
func (r *RedisRecorder) send(batch []Record) []Record {
	n := int64(len(batch))
	j := job{cmds: r.commands(batch), n: n}
	clear(batch)
	r.jobs <- j
	return batch[:0]
}

// drain sends what is queued until ctx ends and counts the rest as dropped.
func (r *RedisRecorder) drain(ctx context.Context, batch []Record) {
	for ctx.Err() == nil {
		for len(batch) < r.batch {
			select {
			case rec := <-r.q:
				r.inFlight.Add(1)
				batch = append(batch, rec)
				continue
			default:
			}
			break
		}
		if len(batch) == 0 {
			return
		}
		batch = r.send(batch)
	}
	r.dropped.Add(int64(len(batch)))
	r.inFlight.Add(-int64(len(batch)))
	for {
		select {
		case <-r.q:
			r.dropped.Add(1)
		default:
			return
		}
	}
}

// write runs jobs until there are no more: each job's commands are sent as
// one pipeline, and those that failed re-sent with backoff, up to
// flushAttempts times, before the job's records are counted as dropped.
func (r *RedisRecorder) write() {
	ctx := r.runCtx
	for j := range r.jobs {
		pending := j.cmds
		backoff := 100 * time.Millisecond
		for attempt := 1; ; attempt++ {
			var lost bool
			pending, lost = r.exec(ctx, pending)
			if len(pending) == 0 && !lost {
				r.written.Add(j.n)
				break
			}
			r.errors.Add(1)
			if lost || attempt == flushAttempts || !sleep(ctx, backoff) {
				r.dropped.Add(j.n)
				break
			}
			backoff *= 2
		}
		r.inFlight.Add(-j.n)
	}
}

// unsent reports whether err means a pipeline never reached Redis (no
// connection could be had), so re-sending it cannot apply anything twice.
func unsent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrClosed)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// exec sends cmds as one pipeline and returns those that got no reply or an
// error reply; lost is true when the outcome is unknown and the commands must
// not be sent again.
func (r *RedisRecorder) exec(ctx context.Context, cmds [][]any) (failed [][]any, lost bool) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	pipe := r.rdb.Pipeline()
	for _, args := range cmds {
		pipe.Do(ctx, args...)
	}
	res, err := pipe.Exec(ctx)
	if err == nil {
		return nil, false
	}
	if !unsent(err) {
		// The batch went out but its replies were lost (a read timeout or a
		// connection that broke mid-reply): Redis may have applied any prefix
		// of it. Re-sending could count records twice, so the batch is
		// reported as failed without a retry and counted as dropped.
		return nil, true
	}
	failed = cmds[:0]
	for i, c := range res {
		if c.Err() != nil {
			failed = append(failed, cmds[i])
		}
	}
	if len(failed) == 0 && len(res) == 0 {
		return cmds, false
	}
	return failed, false
}

type aggKey struct {
	hour  bool
	dim   int8 // -1: all
	value string
	slot  int64 // unix minute or hour
}

type indexKey struct {
	dim   int8
	value string
	hour  int64
}

// commands turns a batch into Redis commands: one XADD per record, and the
// rollups pre-aggregated so each hash field is incremented once per batch.
func (r *RedisRecorder) commands(batch []Record) [][]any {
	clear(r.agg)
	clear(r.index)
	cmds := make([][]any, 0, len(batch)+64)
	streams := map[string]struct{}{}
	for i := range batch {
		rec := &batch[i]
		if rec.Time.IsZero() {
			rec.Time = time.Now()
		}
		unix := rec.Time.Unix()
		minute, hour := floorDiv(unix, 60), floorDiv(unix, 3600)
		stream := r.prefix + "req:" + r.names.day(rec.Time)
		streams[stream] = struct{}{}
		cmds = append(cmds, r.xadd(stream, rec))
		vals := [len(Dims)]string{orNone(rec.Tier), orNone(rec.Model), orNone(rec.KeyID)}
		r.add(aggKey{dim: -1, slot: minute}, rec)
		r.add(aggKey{hour: true, dim: -1, slot: hour}, rec)
		for d, v := range vals {
			r.add(aggKey{dim: int8(d), value: v, slot: minute}, rec)
			r.add(aggKey{hour: true, dim: int8(d), value: v, slot: hour}, rec)
			r.index[indexKey{dim: int8(d), value: v, hour: hour}] = struct{}{}
		}
	}
	ttl := int64(r.ttl / time.Second)
	for s := range streams {
		cmds = append(cmds, []any{"expire", s, ttl})
	}
	for k, c := range r.agg {
		key := r.rollupKey(k)
		for f, v := range c {
			if v != 0 {
				cmds = append(cmds, []any{"hincrby", key, RollupFields[f], v})
			}
		}
		t := ttl
		if !k.hour {
			t = int64(r.minTTL / time.Second)
		}
		cmds = append(cmds, []any{"expire", key, t})
	}
	for k := range r.index {
		key := r.prefix + "ix:" + Dims[k.dim] + ":" + r.names.hour(k.hour)
		cmds = append(cmds, []any{"sadd", key, k.value}, []any{"expire", key, ttl})
	}
	return cmds
}

func (r *RedisRecorder) add(k aggKey, rec *Record) {
	c := r.agg[k]
	if c == nil {
		c = new([nFields]int64)
		r.agg[k] = c
	}
	c[fRequests]++
	if rec.Escalated {
		c[fEscalations]++
	}
	switch {
	case rec.Outcome.Failed():
		c[fErrors]++
	case rec.Outcome == OutcomeClientError:
		c[fClientErrors]++
	case rec.Outcome == OutcomeClientCancelled:
		c[fCancelled]++
	case rec.Outcome == OutcomeRejected:
		c[fRejected]++
	}
	switch rec.Move {
	case MoveUp:
		c[fFallbacks]++
	case MoveDown:
		c[fDegraded]++
	}
	c[fInputTokens] += int64(rec.InputTokens)
	c[fOutputTokens] += int64(rec.OutputTokens)
	c[fCost] += rec.CostMicroUSD
	c[fBaseline] += rec.BaselineMicroUSD
	c[fEnergy] += rec.EnergyMilliWh
	c[fLat0+bucketOf(rec.Latency)]++
	if rec.TTFT > 0 {
		c[fTTFT0+bucketOf(rec.TTFT)]++
	}
}

func (r *RedisRecorder) rollupKey(k aggKey) string {
	g, t := "m:", ""
	if k.hour {
		g, t = "h:", r.names.hour(k.slot)
	} else {
		t = r.names.minute(k.slot)
	}
	if k.dim < 0 {
		return r.prefix + g + "all:" + t
	}
	return r.prefix + g + Dims[k.dim] + ":" + k.value + ":" + t
}

// xadd is the stream entry of one record.
func (r *RedisRecorder) xadd(stream string, rec *Record) []any {
	a := make([]any, 0, 48)
	a = append(a, "xadd", stream, "maxlen", "~", r.maxLen, "*",
		"ts", rec.Time.UnixMilli(),
		"id", rec.RequestID)
	if rec.TraceID != "" {
		a = append(a, "trace", rec.TraceID)
	}
	a = append(a, "key", orNone(rec.KeyID), "tier", rec.Tier, "model", rec.Model, "endpoint", rec.Endpoint,
		"stream", b01(rec.Stream), "escalated", b01(rec.Escalated))
	if rec.Reason != "" {
		a = append(a, "reason", rec.Reason)
	}
	a = append(a, "score", strconv.FormatFloat(rec.Score, 'f', 4, 64),
		"input_tokens", rec.InputTokens, "output_tokens", rec.OutputTokens, "estimated", b01(rec.Estimated),
		"cost_uusd", rec.CostMicroUSD, "baseline_uusd", rec.BaselineMicroUSD, "energy_mwh", rec.EnergyMilliWh,
		"ttft_ms", rec.TTFT.Milliseconds(), "latency_ms", rec.Latency.Milliseconds(),
		"outcome", rec.Outcome.String())
	if rec.Move != MoveNone {
		a = append(a, "move", rec.Move.String())
	}
	return a
}

func b01(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// timeNames formats key time suffixes, caching the last of each.
type timeNames struct {
	dayN, minN, hourN int64
	dayS, minS, hourS string
}

func (t *timeNames) day(tm time.Time) string {
	d := floorDiv(tm.Unix(), 86400)
	if t.dayS == "" || d != t.dayN {
		t.dayN, t.dayS = d, time.Unix(d*86400, 0).UTC().Format("20060102")
	}
	return t.dayS
}

func (t *timeNames) minute(m int64) string {
	if t.minS == "" || m != t.minN {
		t.minN, t.minS = m, time.Unix(m*60, 0).UTC().Format("200601021504")
	}
	return t.minS
}

func (t *timeNames) hour(h int64) string {
	if t.hourS == "" || h != t.hourN {
		t.hourN, t.hourS = h, time.Unix(h*3600, 0).UTC().Format("2006010215")
	}
	return t.hourS
}
