package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.WriteHeader(int(status.Load()))
		case "/hang":
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		case "/moved":
			http.Redirect(w, r, "/healthz", http.StatusFound)
		}
	}))
	defer srv.Close()
	defer close(hang)

	if err := runHealthcheck([]string{"--url", srv.URL + "/healthz"}); err != nil {
		t.Errorf("healthy server: %v", err)
	}
	status.Store(http.StatusServiceUnavailable)
	if err := runHealthcheck([]string{"--url", srv.URL + "/healthz"}); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("503: err = %v, want one naming the status", err)
	}
	if err := runHealthcheck([]string{"--url", srv.URL + "/moved"}); err == nil {
		t.Error("a redirect counted as healthy")
	}
	// The handler hangs until the test ends: only the timeout can end this call.
	if err := runHealthcheck([]string{"--url", srv.URL + "/hang", "--timeout", "100ms"}); err == nil {
		t.Error("a server that never answers counted as healthy")
	}
	if err := runHealthcheck([]string{"--url", "http://127.0.0.1:1/healthz"}); err == nil {
		t.Error("nothing listening counted as healthy")
	}
	if err := runHealthcheck([]string{"extra"}); err == nil {
		t.Error("stray argument accepted")
	}
}
