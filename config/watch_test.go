package config

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// watchCount starts Watch on path and returns a counter of onChange calls.
func watchCount(t *testing.T, path string) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done, err := Watch(ctx, path, 20*time.Millisecond, func() { n.Add(1) }, func(err error) { t.Log(err) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })
	return &n
}

func waitCount(t *testing.T, n *atomic.Int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("onChange called %d times, want %d", n.Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWatchInPlaceAndRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cascade.yaml")
	write(t, path, "listen: a\n")
	n := watchCount(t, path)

	write(t, path, "listen: b\n") // written in place
	waitCount(t, n, 1)

	// An editor's save: write a temp file, rename it over the original.
	tmp := filepath.Join(dir, ".cascade.yaml.swp")
	write(t, tmp, "listen: c\n")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitCount(t, n, 2)

	// Same bytes again, and an unrelated file: no call.
	write(t, path, "listen: c\n")
	write(t, filepath.Join(dir, "other.txt"), "x")
	time.Sleep(200 * time.Millisecond)
	if got := n.Load(); got != 2 {
		t.Fatalf("onChange called %d times for unchanged content; want 2", got)
	}
}

// TestWatchConfigMapSwap replays how the kubelet updates a ConfigMap volume:
// the file is a symlink through ..data, and ..data is atomically re-pointed
// at a new timestamped directory.
func TestWatchConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	v1 := filepath.Join(dir, "..2026_01_01_00_00_00.1")
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(v1, "cascade.yaml"), "listen: one\n")
	if err := os.Symlink(filepath.Base(v1), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "cascade.yaml")
	if err := os.Symlink(filepath.Join("..data", "cascade.yaml"), path); err != nil {
		t.Fatal(err)
	}
	n := watchCount(t, path)

	v2 := filepath.Join(dir, "..2026_01_01_00_01_00.2")
	if err := os.Mkdir(v2, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(v2, "cascade.yaml"), "listen: two\n")
	if err := os.Symlink(filepath.Base(v2), filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(v1)
	waitCount(t, n, 1)
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "listen: two\n" {
		t.Fatalf("after the swap the file reads %q, %v", b, err)
	}
}

func TestWatchMissingDirectory(t *testing.T) {
	_, err := Watch(context.Background(), filepath.Join(t.TempDir(), "nope", "cascade.yaml"), 0, func() {}, nil)
	if err == nil {
		t.Fatal("watching a file in a missing directory succeeded")
	}
}
