package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/gateway"
)

// setupRecorder connects to the real Redis, and the records it takes come
// back through the same read path as cascade stats.
func TestSetupRecorderRecordsAndStatsReads(t *testing.T) {
	cfg := config.Default()
	cfg.Redis.URL = "redis://127.0.0.1:6379/0"
	cfg.Redis.Prefix = fmt.Sprintf("test:%s:%x:", t.Name(), rand.Uint64())
	var opts gateway.Options
	closeRec, err := setupRecorder(context.Background(), &cfg, &opts)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Redis == nil || opts.Recorder == nil {
		t.Fatalf("options not set: %+v", opts)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	defer func() {
		ctx := context.Background()
		if keys, _ := rdb.Keys(ctx, cfg.Redis.Prefix+"*").Result(); len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
	}()
	now := time.Now()
	for i := 0; i < 5; i++ {
		opts.Recorder.Record(costing.Record{Time: now, Tier: "small", Model: "m", OutputTokens: 10, CostMicroUSD: 7,
			BaselineMicroUSD: 70, EnergyMilliWh: 1, Latency: 120 * time.Millisecond})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := closeRec(ctx); err != nil { // drains the queue
		t.Fatal(err)
	}
	if st := opts.Recorder.(costing.StatsReporter).Stats(); st.Written != 5 {
		t.Fatalf("recorder stats %+v", st)
	}

	var out bytes.Buffer
	stdout := statsOut
	statsOut = &out
	defer func() { statsOut = stdout }()
	if err := runStats([]string{"--redis", cfg.Redis.URL, "--prefix", cfg.Redis.Prefix, "--window", "1h"}); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	// small: 5 requests, 50 output tokens, 35 µUSD of 350 µUSD baseline: 90 % saved.
	if !strings.Contains(table, "by tier") || !tableRow(table, "small", "5", "50", "0.000035", "0.000350", "90.0%") ||
		!tableRow(table, "total", "5") {
		t.Fatalf("table:\n%s", table)
	}
	out.Reset()
	if err := runStats([]string{"--redis", cfg.Redis.URL, "--prefix", cfg.Redis.Prefix, "--by", "model", "--json"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"m": {`) || !strings.Contains(out.String(), `"requests": 5`) {
		t.Fatalf("json:\n%s", out.String())
	}
	if err := runStats([]string{"--redis", cfg.Redis.URL, "--by", "colour"}); err == nil {
		t.Fatal("bad --by accepted")
	}
}

// tableRow reports whether some line starts (after spaces) with first and
// holds every other word.
func tableRow(text, first string, words ...string) bool {
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != first {
			continue
		}
		ok := true
		for _, w := range words {
			found := false
			for _, x := range f[1:] {
				if x == w {
					found = true
				}
			}
			ok = ok && found
		}
		if ok {
			return true
		}
	}
	return false
}

func TestSetupRecorderWithoutRedis(t *testing.T) {
	cfg := config.Default()
	var opts gateway.Options
	closeRec, err := setupRecorder(context.Background(), &cfg, &opts)
	if err != nil || opts.Recorder != nil || opts.Redis != nil {
		t.Fatalf("no redis.url: %v %+v", err, opts)
	}
	if err := closeRec(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// go-redis's own lines come out through slog, dial failures at debug.
func TestRedisLogsGoThroughSlog(t *testing.T) {
	logs := captureLogs(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer c.Close()
	if err := c.Ping(context.Background()).Err(); err == nil {
		t.Fatal("ping of a closed port succeeded")
	}
	l := logs.find("connection pool: failed to dial")
	if len(l) == 0 || l[0]["component"] != "go-redis" || l[0]["level"] != slog.LevelDebug {
		t.Fatalf("dial failure lines %v, all lines %v", l, logs.find(""))
	}
}

// What the drain deadline leaves unwritten is counted and logged.
func TestSetupRecorderCountsWhatShutdownCannotWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	logs := captureLogs(t)
	cfg := config.Default()
	cfg.Redis.URL = "redis://" + addr + "/0"
	var opts gateway.Options
	closeRec, err := setupRecorder(context.Background(), &cfg, &opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		opts.Recorder.Record(costing.Record{Time: time.Now(), Tier: "small"})
	}
	// Long enough for go-redis to give up dialling (5 tries 100ms apart)
	// once: the recorder then says it lost Redis.
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if err := closeRec(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("close: %v, want the deadline", err)
	}
	l := logs.find("recorder dropped records")
	if len(l) != 1 || l[0]["dropped"] != int64(5) || l[0]["dropped_at_shutdown"] != int64(5) || l[0]["written"] != int64(0) {
		t.Fatalf("drop lines %v", l)
	}
	if lost := logs.find("recorder lost redis"); len(lost) != 1 {
		t.Fatalf("lost lines %v, want one", lost)
	}
}

// logCapture is a slog handler that keeps what is logged.
type logCapture struct {
	mu   sync.Mutex // guards recs
	recs []slog.Record
}

// captureLogs makes a logCapture the default logger until the test ends.
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

// find returns the level and attributes of the lines whose message holds msg.
func (h *logCapture) find(msg string) []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]any
	for _, r := range h.recs {
		if strings.Contains(r.Message, msg) {
			m := map[string]any{"level": r.Level, "msg": r.Message}
			r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
			out = append(out, m)
		}
	}
	return out
}
