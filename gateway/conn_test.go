package gateway

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// closedWithin reads from conn until the server closes it and returns how
// long that took and what was read; it fails the test if the connection is
// still open after limit.
func closedWithin(t *testing.T, conn net.Conn, limit time.Duration) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	conn.SetReadDeadline(start.Add(limit))
	got, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v (read %q)", limit, got)
	}
	return time.Since(start), string(got)
}

// Idle, half-sent-header and header-but-no-body connections are closed
// after the configured timeouts instead of being held for ever.
func TestSlowClientsAreClosed(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	cfg := testConfig(t, []string{smallURL}, []string{smallURL})
	cfg.Server.ReadHeaderTimeout = 300 * time.Millisecond
	cfg.Server.ReadBodyTimeout = 600 * time.Millisecond
	cfg.Server.IdleTimeout = 400 * time.Millisecond
	_, base := startGateway(t, cfg, Options{})
	addr := strings.TrimPrefix(base, "http://")
	body := `{"model":"small","messages":[{"role":"user","content":"hi"}]}`
	request := "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n"
	for _, tc := range []struct {
		name     string
		send     func(net.Conn)
		min, max time.Duration
		reply    string // expected in what the server wrote before closing
	}{
		{"idle after connecting", func(net.Conn) {}, 250 * time.Millisecond, 2 * time.Second, ""},
		{"half-sent header", func(c net.Conn) {
			io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow:")
			time.Sleep(100 * time.Millisecond)
			io.WriteString(c, " a") // trickling does not extend the deadline
		}, 250 * time.Millisecond, 2 * time.Second, "408"},
		{"header but no body", func(c net.Conn) { io.WriteString(c, request) }, 550 * time.Millisecond, 3 * time.Second, "408"},
		{"half the body", func(c net.Conn) { io.WriteString(c, request+body[:10]) }, 550 * time.Millisecond, 3 * time.Second, "408"},
		{"idle keep-alive after a request", func(c net.Conn) {
			io.WriteString(c, request+body)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Errorf("first request: %v %v", resp, err)
				return
			}
			io.Copy(io.Discard, resp.Body)
		}, 0, 2 * time.Second, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			tc.send(conn)
			_, got := closedWithin(t, conn, tc.max)
			took := time.Since(start)
			if took < tc.min {
				t.Fatalf("closed after %v, before the timeout (%v)", took, tc.min)
			}
			if !strings.Contains(got, tc.reply) {
				t.Fatalf("server wrote %q, want it to contain %q", got, tc.reply)
			}
		})
	}
	// A slow but steady body within the body timeout is served.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, request+body[:10])
	time.Sleep(400 * time.Millisecond) // longer than the header timeout
	io.WriteString(conn, body[10:])
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("slow body within the body timeout: %v %v", resp, err)
	}
	resp.Body.Close()
}

// Headers up to server.max_header_bytes are accepted; larger ones get an
// OpenAI-shaped 431.
func TestMaxHeaderBytes(t *testing.T) {
	cfg := testConfig(t, []string{"http://127.0.0.1:1/v1"}, []string{"http://127.0.0.1:1/v1"})
	_, base := startGateway(t, cfg, Options{})
	for _, tc := range []struct {
		size   int
		status int
	}{{12 << 10, 200}, {15 << 10, 200}, {17 << 10, 431}} {
		req, _ := http.NewRequest(http.MethodGet, base+"/healthz", nil)
		req.Header.Set("X-Big", strings.Repeat("a", tc.size))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%d-byte header: %v", tc.size, err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Fatalf("%d-byte header: status %d, want %d: %s", tc.size, resp.StatusCode, tc.status, raw)
		}
		if tc.status == 431 && !strings.Contains(string(raw), `"error"`) {
			t.Fatalf("431 is not OpenAI-shaped: %s", raw)
		}
	}
}

// A reload changes the body timeout and max_body_bytes for new requests
// (both are read when a request's headers are in).
func TestBodyLimitsFollowReload(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	cfg := testConfig(t, []string{smallURL}, []string{smallURL})
	g, base := startGateway(t, cfg, Options{})
	body := `{"model":"small","messages":[{"role":"user","content":"` + strings.Repeat("x", 2048) + `"}]}`
	post := func() int {
		resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := post(); s != 200 {
		t.Fatalf("status %d", s)
	}
	cfg2 := *cfg
	cfg2.MaxBodyBytes = 1024
	if err := g.Apply(&cfg2); err != nil {
		t.Fatal(err)
	}
	if s := post(); s != 413 {
		t.Fatalf("after lowering max_body_bytes: status %d, want 413", s)
	}
}

// fdCount is the number of open descriptors of this process, or -1.
func fdCount() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// Many idle connections are all reaped: descriptors come back.
func TestIdleConnectionsReaped(t *testing.T) {
	if fdCount() < 0 {
		t.Skip("no /proc/self/fd")
	}
	cfg := testConfig(t, []string{"http://127.0.0.1:1/v1"}, []string{"http://127.0.0.1:1/v1"})
	cfg.Server.ReadHeaderTimeout = 200 * time.Millisecond
	_, base := startGateway(t, cfg, Options{})
	addr := strings.TrimPrefix(base, "http://")
	before := fdCount()
	conns := make([]net.Conn, 200)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	// The server side of each connection is closed after the header
	// timeout; the client sides stay ours until closed below.
	waitFor(t, 5*time.Second, "server to close every idle connection", func() bool { return fdCount() <= before+len(conns) })
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("a connection is still open")
			}
		}
	}
}
