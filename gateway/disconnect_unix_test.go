//go:build unix

package gateway

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/costing"
)

// waitCancelled waits until the simulator saw n cancelled requests.
func waitCancelled(t *testing.T, s *sim.Server, n int64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second) // the backend takes 20s
	for s.Stats().Cancelled < n {
		if time.Now().After(deadline) {
			t.Fatalf("simulator never saw the cancellation: %+v", s.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitRecord waits for the gateway's record of a request.
func waitRecord(t *testing.T, rec *tee) costing.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.records()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no record")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return rec.records()[0]
}

func TestClientHangUpCancelsWaitingRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		cfg  sim.Config
	}{
		// A non-streaming answer is written only when complete: the client
		// leaves while the backend generates.
		{"non-streaming", `{"model":"small","messages":[{"role":"user","content":"hi"}]}`,
			sim.Config{Model: "small-model", TTFT: 20 * time.Second}},
		// A stream whose first token is slow: nothing was flushed yet.
		{"stream before first chunk", `{"model":"small","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			sim.Config{Model: "small-model", SlowStart: 20 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			small, smallURL := simServer(t, tc.cfg)
			rec := &tee{next: costing.Nop{}}
			_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{Recorder: rec})
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
				t.Fatalf("request finished (%d) although the backend takes 20s", resp.StatusCode)
			}
			waitCancelled(t, small, 1)
			if r := waitRecord(t, rec); r.Outcome != costing.OutcomeClientCancelled {
				t.Fatalf("recorded status %v, want client_cancelled", r.Outcome)
			}
			if st := small.Stats(); st.Completed != 0 {
				t.Fatalf("generation completed for nobody: %+v", st)
			}
		})
	}
}

// The watch must leave keep-alive connections usable: requests slower than
// the watch delay, one after the other on one connection.
func TestClientWatchKeepsConnectionUsable(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model", TTFT: clientWatchDelay + 50*time.Millisecond})
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	tr := &http.Transport{MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	body := `{"model":"small","messages":[{"role":"user","content":"hi"}]}`
	reused := 0
	for i := 0; i < 3; i++ {
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
			if ci.Reused {
				reused++
			}
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
			http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(raw), `"choices"`) {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, raw)
		}
	}
	if reused != 2 {
		t.Fatalf("connection reused %d times, want 2", reused)
	}
	if st := small.Stats(); st.Cancelled != 0 || st.Completed != 3 {
		t.Fatalf("simulator: %+v", st)
	}
}

// A request that arrives on the connection while the previous one is still
// waiting (pipelining) is neither lost nor taken for a hang-up.
func TestClientWatchLeavesPipelinedRequest(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model", TTFT: clientWatchDelay + 100*time.Millisecond})
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"model":"small","messages":[{"role":"user","content":"hi"}]}`
	raw := "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body
	conn.Write([]byte(raw))
	time.Sleep(clientWatchDelay + 30*time.Millisecond) // the first request is being watched
	conn.Write([]byte(raw))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	for i := 0; i < 2; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"choices"`) {
			t.Fatalf("response %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if st := small.Stats(); st.Cancelled != 0 || st.Completed != 2 {
		t.Fatalf("simulator: %+v", st)
	}
}

// The watch outlives the body's read deadline: a client that leaves after
// server.read_body_timeout still cancels its request.
func TestClientWatchOutlivesBodyTimeout(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model", TTFT: 20 * time.Second})
	cfg := testConfig(t, []string{smallURL}, []string{smallURL})
	cfg.Server.ReadBodyTimeout = 100 * time.Millisecond
	_, base := startGateway(t, cfg, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions",
		strings.NewReader(`{"model":"small","messages":[{"role":"user","content":"hi"}]}`))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("request finished (%d) although the backend takes 20s", resp.StatusCode)
	}
	waitCancelled(t, small, 1)
}
