package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
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
