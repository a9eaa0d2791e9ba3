package gateway

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/config"
	"github.com/redis/go-redis/v9"
)

// startGateway serves a gateway for cfg on a loopback port and returns its
// base URL ("http://127.0.0.1:port").
func startGateway(t testing.TB, cfg *config.Config, opts Options) (*Gateway, string) {
	t.Helper()
	g, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.App().Listener(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	})
	return g, "http://" + ln.Addr().String()
}

// testConfig is a two-tier config whose endpoints are the given base URLs.
func testConfig(t testing.TB, small, large []string) *config.Config {
	t.Helper()
	c := config.Default()
	c.Tiers = []config.Tier{{Name: "small"}, {Name: "large"}}
	for _, u := range small {
		c.Tiers[0].Endpoints = append(c.Tiers[0].Endpoints, config.Endpoint{URL: u, Model: "small-model", Weight: 1})
	}
	for _, u := range large {
		c.Tiers[1].Endpoints = append(c.Tiers[1].Endpoints, config.Endpoint{URL: u, Model: "large-model", Weight: 1})
	}
	c.Breaker.OpenFor = 200 * time.Millisecond
	c.Breaker.ConsecutiveFailures = 3
	c.Timeouts.FirstByte = 5 * time.Second
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

// testRedis connects to the local Redis and returns a unique key prefix;
// every key under it is deleted when the test ends.
func testRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		t.Fatalf("redis at 127.0.0.1:6379: %v", err)
	}
	prefix := fmt.Sprintf("test:%s:%x:", t.Name(), rand.Uint64())
	t.Cleanup(func() {
		ctx := context.Background()
		keys, _ := rdb.Keys(ctx, prefix+"*").Result()
		if len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
		rdb.Close()
	})
	return rdb, prefix
}

// testRecorderRedis is testRedis plus a client set up for the recorder the
// way cmd/cascade sets it up (no client-level retries, context deadlines).
func testRecorderRedis(t *testing.T) (rdb, recClient *redis.Client, prefix string) {
	t.Helper()
	rdb, prefix = testRedis(t)
	recClient = redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { recClient.Close() })
	return rdb, recClient, prefix
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
