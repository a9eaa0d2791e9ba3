package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/gateway"
)

// On SIGTERM the recorder drains with its own deadline after the HTTP
// drain: with a grace period that is over at once, the records of the
// requests served are still written.
func TestServeDrainsRecorderAfterGrace(t *testing.T) {
	simURL, err := startSim(sim.Config{Model: "small-model"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := config.Default()
	cfg.Listen = addr
	cfg.Tiers = []config.Tier{{Name: "small", Endpoints: []config.Endpoint{{URL: simURL, Model: "small-model", Weight: 1}},
		Cost: config.Cost{GPU: &demoSmallGPU}}}
	cfg.Redis.URL = "redis://127.0.0.1:6379/0"
	cfg.Redis.Prefix = fmt.Sprintf("test:%s:%x:", t.Name(), rand.Uint64())
	cfg.Recorder.FlushInterval = time.Hour // only the drain writes
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	defer func() {
		ctx := context.Background()
		if keys, _ := rdb.Keys(ctx, cfg.Redis.Prefix+"*").Result(); len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
	}()
	logs := captureLogs(t)

	served := make(chan error, 1)
	go func() { served <- serve(&cfg, "", gateway.Options{}, time.Nanosecond, 5*time.Second) }()
	const n = 20
	url := "http://" + addr + "/v1/chat/completions"
	deadline := time.Now().Add(10 * time.Second)
	for sent := 0; sent < n; {
		resp, err := http.Post(url, "application/json",
			strings.NewReader(`{"model":"auto","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatalf("gateway does not answer: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		sent++
	}
	// serve has registered for SIGTERM before it listened.
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		t.Logf("serve returned %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not return after SIGTERM")
	}
	stream := cfg.Redis.Prefix + "req:" + time.Now().UTC().Format("20060102")
	if got := rdb.XLen(context.Background(), stream).Val(); got != n {
		t.Fatalf("%d records in Redis after shutdown, want %d", got, n)
	}
	if l := logs.find("recorder drained"); len(l) != 1 || l[0]["written"] != int64(n) {
		t.Fatalf("drain lines %v", l)
	}
}
