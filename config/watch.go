package config

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is how long Watch waits for a burst of file events to end.
const DefaultDebounce = 250 * time.Millisecond

// Watch calls onChange whenever the content of the file at path changes,
// until ctx ends. It watches the file's directory rather than the file, so it
// follows every way a file gets replaced: written in place, an editor's
// write-to-temp-then-rename, and Kubernetes' ConfigMap volumes, where path
// is a symlink through "..data" that is swapped atomically. Bursts of events
// are debounced (debounce <= 0 means DefaultDebounce), and onChange runs only
// when the bytes differ from those seen last (a touch does not reload).
// onChange runs on Watch's goroutine, one call at a time.
//
// Watch returns once the watch is set up; errors after that go to onError
// (which may be nil). It returns an error when the directory cannot be
// watched.
func Watch(ctx context.Context, path string, debounce time.Duration, onChange func(), onError func(error)) (done <-chan struct{}, err error) {
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config watch: %w", err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("config watch: %w", err)
	}
	dir := filepath.Dir(abs)
	if err := w.Add(dir); err != nil {
		w.Close()
		return nil, fmt.Errorf("config watch %s: %w", dir, err)
	}
	if onError == nil {
		onError = func(error) {}
	}
	last, _ := fileSum(abs)
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		defer w.Close()
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				// Any change in the directory may replace the file (a
				// rename onto it, a ConfigMap's ..data symlink swap).
				if ev.Op == fsnotify.Chmod {
					continue
				}
				timer.Reset(debounce)
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				onError(fmt.Errorf("config watch: %w", err))
			case <-timer.C:
				sum, err := fileSum(abs)
				if err != nil {
					// Mid-replacement or deleted: wait for the next event.
					if !os.IsNotExist(err) {
						onError(fmt.Errorf("config watch: %w", err))
					}
					continue
				}
				if sum == last {
					continue
				}
				last = sum
				onChange()
			}
		}
	}()
	return ch, nil
}

// fileSum hashes the content at path, following symlinks.
func fileSum(path string) ([sha256.Size]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(b), nil
}
