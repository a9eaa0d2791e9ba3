package costing

import (
	"context"
	"log/slog"
	"math/rand/v2"
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
	fCascaded
	fConfidence
	fWasted
	fLat0
	fTTFT0  = fLat0 + nBuckets
	nFields = fTTFT0 + nBuckets
)

// RollupFields are the hash fields of a rollup, indexed as above: requests,
// escalations (the router's decisions only), errors (failed outcomes:
// upstream_error, timeout, invalid_response, shutdown), input_tokens,
// output_tokens, cost_uusd, baseline_uusd (micro-USD), energy_mwh (milli-Wh),
// fallbacks_up, degraded_down (served on another tier than the router chose),
// client_errors, cancelled, rejected, cascaded (answers the verifier
// judged), escalations_confidence (of those, escalated), wasted_uusd (cost of
// the cheap answers thrown away), then lat_b0.., then ttft_b0.. (ttft only for requests that got a first byte).
var RollupFields = func() [nFields]string {
	var f [nFields]string
	copy(f[:], []string{"requests", "escalations", "errors", "input_tokens", "output_tokens",
		"cost_uusd", "baseline_uusd", "energy_mwh", "fallbacks_up", "degraded_down", "client_errors",
		"cancelled", "rejected", "cascaded", "escalations_confidence", "wasted_uusd"})
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
	Dropped int64 `json:"dropped"` // lost: queue full, or not written by Close's deadline
	Written int64 `json:"written"` // in Redis
	Errors  int64 `json:"errors"`  // failed flush attempts
}

// StatsReporter is implemented by recorders that count their work.
type StatsReporter interface {
	Stats() RecorderStats
}

// writers is how many batches may be in flight at once: one is built
// while another waits for Redis.
const writers = 2

// Retry delays of a batch Redis did not take: doubling from minBackoff up to
// maxBackoff, each with up to half of it taken off at random so that
// gateways do not retry in step.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// applyScript applies one batch at most once. KEYS[1] is the writer's marker:
// the sequence number of the last batch that writer applied. ARGV[1] is this
// batch's number and ARGV[2] the marker's TTL in seconds; the rest of ARGV
// is the batch's commands, each as: the number n of its arguments after the
// key, its name, the index of its key in KEYS, the n arguments. A batch whose
// number is not above the marker's was applied before (only its reply was
// lost) and is skipped, so re-sending a batch is harmless. The marker is set
// first: when Redis refuses writes (out of memory) nothing is applied.
// Commands run under pcall: one that fails (a key of another type under the
// prefix) is counted and the rest of the batch still applied. It returns
// {applied (0 or 1), failed commands, first error}.
var applyScript = redis.NewScript(`
local seq = tonumber(ARGV[1])
if seq <= tonumber(redis.call('GET', KEYS[1]) or '0') then
	return {0, 0, ''}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local failed, first = 0, ''
local i = 3
while i <= #ARGV do
	local n = tonumber(ARGV[i])
	local r = redis.pcall(ARGV[i+1], KEYS[tonumber(ARGV[i+2])], unpack(ARGV, i+3, i+2+n))
	if type(r) == 'table' and r.err then
		failed = failed + 1
		if first == '' then first = r.err end
	end
	i = i + 3 + n
end
return {1, failed, first}
`)

// RedisRecorder writes records to Redis off the request path. Record puts a
// copy in a bounded queue and returns at once; a flusher turns batches of
// records (every flush interval or batch size records) into one script call
// each (applyScript), applied at most once however often it is sent.
//
// When Redis is slow or down, a batch is re-sent with capped exponential
// backoff until Redis takes it; meanwhile records wait in the queue, and only
// records that find the queue full are dropped and counted. A batch whose
// reply was lost (timeout, connection broken mid-reply) is re-sent like any
// other: if Redis had applied it, the re-send is skipped. One slog line says
// when Redis was lost and one when it answers again. The client reconnects by
// itself.
//
// The client should be dedicated to the recorder with MaxRetries -1 (the
// recorder retries with its own backoff and sees every failure) and
// ContextTimeoutEnabled. Logs go to the slog.Default() of the time of
// NewRedisRecorder.
//
// Redis Cluster: one batch touches the day's stream, the rollup hashes and
// indexes of its minutes and hours, and the writer's marker, all in one
// script, so they would need one hash slot (a hash tag such as "{cascade}:"
// as the prefix puts every recorder key on one node; spreading them would
// need one script call per slot, each with its own marker).
type RedisRecorder struct {
	rdb       redis.UniversalClient
	log       *slog.Logger
	prefix    string
	interval  time.Duration
	batch     int
	maxLen    int64
	ttl       time.Duration
	minTTL    time.Duration
	timeout   time.Duration // per flush attempt
	markerKey string        // + writer number: see applyScript

	q       chan Record
	jobs    chan job
	closed  atomic.Bool
	closing chan struct{}
	done    chan struct{}
	// runCtx bounds flushes; cancelled when Close's context ends.
	runCtx    context.Context
	cancelRun context.CancelFunc

	inFlight, dropped, written, errors atomic.Int64
	outage                             outage

	// Flusher state, reused across batches.
	agg   map[aggKey]*[nFields]int64
	index map[indexKey]struct{}
	keyAt map[string]int // index of a key in the batch's KEYS
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
		rdb: rdb, log: slog.Default(), prefix: prefix, interval: c.FlushInterval, batch: c.BatchSize,
		maxLen: int64(c.StreamMaxLen), ttl: c.Retention, minTTL: min(c.Retention, MinuteRetention),
		timeout:   max(5*time.Second, 5*c.FlushInterval),
		markerKey: prefix + "batch:" + strconv.FormatUint(rand.Uint64(), 16) + ":",
		q:         make(chan Record, c.QueueSize),
		jobs:      make(chan job),
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
		agg:       map[aggKey]*[nFields]int64{},
		index:     map[indexKey]struct{}{},
		keyAt:     map[string]int{},
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

// Close stops taking records and writes the queued ones, retrying while
// Redis is away, until ctx ends; what is left then is counted as dropped and
// ctx's error returned. Stats are final when Close returns. A batch in
// flight when ctx ends is counted as dropped although Redis may have applied
// it.
func (r *RedisRecorder) Close(ctx context.Context) error {
	if !r.closed.Swap(true) {
		close(r.closing)
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		r.cancelRun() // abandon flushes in progress and count the rest
		<-r.done
		return ctx.Err()
	}
}

func (r *RedisRecorder) run() {
	defer close(r.done)
	defer r.cancelRun()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() { r.write(w) })
	}
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
			r.drain(batch)
			close(r.jobs)
			wg.Wait()
			// Records that raced with Close into the queue.
			for len(r.q) > 0 {
				<-r.q
				r.dropped.Add(1)
			}
			return
		}
	}
}

// job is one batch of n records as a call of applyScript: keys[0], args[0]
// and args[1] are filled in by the writer that sends it.
type job struct {
	keys []string
	args []any
	n    int64
}

// send hands batch to a writer and returns it emptied for reuse. It waits
// while both writers are busy (the queue buffers meanwhile) until Close's
// deadline, after which the batch is counted as dropped.
func (r *RedisRecorder) send(batch []Record) []Record {
	n := int64(len(batch))
	if r.runCtx.Err() == nil {
		select {
		case r.jobs <- r.commands(batch):
			clear(batch)
			return batch[:0]
		case <-r.runCtx.Done():
		}
	}
	r.dropped.Add(n)
	r.inFlight.Add(-n)
	clear(batch)
	return batch[:0]
}

// drain sends what is queued; after Close's deadline send counts it as
// dropped instead.
func (r *RedisRecorder) drain(batch []Record) {
	for {
	fill:
		for len(batch) < r.batch {
			select {
			case rec := <-r.q:
				r.inFlight.Add(1)
				batch = append(batch, rec)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return
		}
		batch = r.send(batch)
	}
}

// write sends jobs until there are no more, each until Redis takes it, with
// backoff in between, or until Close's deadline counts it as dropped.
// Writer w numbers its batches 1, 2, ... under its own marker.
func (r *RedisRecorder) write(w int) {
	ctx := r.runCtx
	marker := r.markerKey + strconv.Itoa(w)
	markerTTL := int64(r.ttl / time.Second)
	var seq int64
	for j := range r.jobs {
		seq++
		j.keys[0], j.args[0], j.args[1] = marker, seq, markerTTL
		for backoff := minBackoff; ; backoff = min(2*backoff, maxBackoff) {
			err := r.apply(ctx, j)
			if err == nil {
				r.written.Add(j.n)
				r.outage.end(r)
				break
			}
			if ctx.Err() != nil {
				r.dropped.Add(j.n)
				break
			}
			r.errors.Add(1)
			r.outage.begin(r, err)
			if !sleep(ctx, backoff-rand.N(backoff/2)) {
				r.dropped.Add(j.n)
				break
			}
		}
		r.inFlight.Add(-j.n)
	}
}

// apply runs j's script call. An error means Redis may or may not have
// applied it; either way it is safe to send again.
func (r *RedisRecorder) apply(ctx context.Context, j job) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, err := applyScript.Run(ctx, r.rdb, j.keys, j.args...).Slice()
	if err != nil {
		return err
	}
	if len(res) == 3 {
		if failed, _ := res[1].(int64); failed > 0 {
			// Applied, less the commands Redis refused: re-sending
			// would change nothing.
			r.errors.Add(1)
			r.outage.refused(r, failed, res[2])
		}
	}
	return nil
}

// outage tracks whether Redis answers, to log one line when it stops and one
// when it is back rather than one per failed flush.
type outage struct {
	down atomic.Bool // fast path for end
	mu   sync.Mutex  // guards the fields below and the log lines' order
	// since is when the first flush failed; dropped0 and errors0 the
	// counters then.
	since             time.Time
	dropped0, errors0 int64
	refusedAt         time.Time // last "commands refused" line
}

func (o *outage) begin(r *RedisRecorder, err error) {
	if o.down.Load() {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.down.Load() {
		return
	}
	o.since, o.dropped0, o.errors0 = time.Now(), r.dropped.Load(), r.errors.Load()-1
	o.down.Store(true)
	r.log.Warn("recorder lost redis; records wait in the queue and are dropped only when it is full",
		"err", err, "queued", r.Stats().Queued, "queue_size", cap(r.q))
}

func (o *outage) end(r *RedisRecorder) {
	if !o.down.Load() {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.down.Load() {
		return
	}
	o.down.Store(false)
	r.log.Info("recorder reached redis again; writing the queued records",
		"down_for", time.Since(o.since).Round(time.Millisecond), "queued", r.Stats().Queued,
		"failed_flushes", r.errors.Load()-o.errors0, "dropped", r.dropped.Load()-o.dropped0)
}

// refused logs, at most once a minute, that Redis refused some commands of
// an applied batch.
func (o *outage) refused(r *RedisRecorder, n int64, first any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if time.Since(o.refusedAt) < time.Minute {
		return
	}
	o.refusedAt = time.Now()
	r.log.Error("redis refused some commands of a batch (a key of another type under the prefix?)",
		"failed_commands", n, "first_err", first, "prefix", r.prefix)
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

// commands turns a batch into a job: one XADD per record, and the rollups
// pre-aggregated so each hash field is incremented once per batch.
func (r *RedisRecorder) commands(batch []Record) job {
	clear(r.agg)
	clear(r.index)
	clear(r.keyAt)
	j := job{keys: make([]string, 1, 64), args: make([]any, 2, len(batch)*48+256), n: int64(len(batch))}
	var day, stream string
	for i := range batch {
		rec := &batch[i]
		if rec.Time.IsZero() {
			rec.Time = time.Now()
		}
		unix := rec.Time.Unix()
		minute, hour := floorDiv(unix, 60), floorDiv(unix, 3600)
		if d := r.names.day(rec.Time); d != day {
			day, stream = d, r.prefix+"req:"+d
		}
		r.xadd(&j, stream, rec)
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
	for _, at := range r.keyAt { // so far the streams only
		j.args = append(j.args, 1, "expire", at, ttl)
	}
	for k, c := range r.agg {
		at := r.key(&j, r.rollupKey(k))
		for f, v := range c {
			if v != 0 {
				j.args = append(j.args, 2, "hincrby", at, RollupFields[f], v)
			}
		}
		t := ttl
		if !k.hour {
			t = int64(r.minTTL / time.Second)
		}
		j.args = append(j.args, 1, "expire", at, t)
	}
	for k := range r.index {
		at := r.key(&j, r.prefix+"ix:"+Dims[k.dim]+":"+r.names.hour(k.hour))
		j.args = append(j.args, 1, "sadd", at, k.value, 1, "expire", at, ttl)
	}
	return j
}

// key returns the index of k in j's KEYS (as the script sees it, from 1),
// adding it if new.
func (r *RedisRecorder) key(j *job, k string) int {
	at, ok := r.keyAt[k]
	if !ok {
		j.keys = append(j.keys, k)
		at = len(j.keys)
		r.keyAt[k] = at
	}
	return at
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
	if rec.Cascaded {
		c[fCascaded]++
		if rec.Escalated {
			c[fConfidence]++
		}
	}
	c[fWasted] += rec.WastedMicroUSD
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

// xadd appends the stream entry of one record to j.
func (r *RedisRecorder) xadd(j *job, stream string, rec *Record) {
	n := len(j.args)
	a := append(j.args, 0, "xadd", r.key(j, stream), "maxlen", "~", r.maxLen, "*",
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
	if rec.Cascaded {
		a = append(a, "verifier", strconv.FormatFloat(rec.Verifier, 'f', 4, 64), "hold_ms", rec.Hold.Milliseconds())
	}
	if d := &rec.Discarded; d.Tier != "" {
		a = append(a, "discarded_tier", d.Tier, "discarded_model", d.Model,
			"discarded_input_tokens", d.InputTokens, "discarded_output_tokens", d.OutputTokens,
			"wasted_uusd", rec.WastedMicroUSD)
	}
	a[n] = len(a) - n - 3 // arguments after the key
	j.args = a
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
