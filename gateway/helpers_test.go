package gateway

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/config"
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
