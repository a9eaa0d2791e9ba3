package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/gateway"
)

func writeThreshold(t *testing.T, path, url string, threshold float64) {
	t.Helper()
	y := fmt.Sprintf("routing:\n  threshold: %g\nscrape:\n  interval: -1s\ntiers:\n  - name: small\n    endpoints: [{url: %q, model: m}]\n", threshold, url)
	if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWatchConfig drives the serve command's reload wiring: a file change
// and SIGHUP both reload the gateway.
func TestWatchConfig(t *testing.T) {
	srv := httptest.NewServer(sim.New(sim.Config{Model: "m"}))
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "cascade.yaml")
	writeThreshold(t, path, srv.URL+"/v1", 0.5)
	cfg, err := config.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(cfg, gateway.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Shutdown(context.Background())
	stop := watchConfig(context.Background(), g, path)
	defer stop()
	if g.ConfigFile() != path {
		t.Fatalf("config file %q, want %q", g.ConfigFile(), path)
	}
	wait := func(what string, cond func(gateway.ReloadResult) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond(g.LastReload()) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; last reload %+v", what, g.LastReload())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	initial := g.LastReload().Version

	writeThreshold(t, path, srv.URL+"/v1", 0.25)
	wait("the file change to reload", func(r gateway.ReloadResult) bool { return r.OK && r.Version != initial })
	changed := g.LastReload()

	// SIGHUP reloads even when the file is unchanged: the time moves on.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	wait("SIGHUP to reload", func(r gateway.ReloadResult) bool { return r.OK && r.Time.After(changed.Time) })
	if g.LastReload().Version != changed.Version {
		t.Fatal("the same file gave another version")
	}
}
