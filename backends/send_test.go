package backends

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/tidwall/gjson"

	"github.com/cascade-gateway/cascade/config"
)

const okAnswer = `{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}`

// upstream is a test model server over loopback that counts its requests.
type upstream struct {
	*httptest.Server
	hits atomic.Int64
}

// newUpstream serves h; handlers that hang return when the test ends.
func newUpstream(t *testing.T, h func(w http.ResponseWriter, r *http.Request, release <-chan struct{})) *upstream {
	t.Helper()
	u := &upstream{}
	release := make(chan struct{})
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		io.Copy(io.Discard, r.Body)
		h(w, r, release)
	}))
	t.Cleanup(u.Close)
	t.Cleanup(func() { close(release) }) // runs first: hung handlers return
	return u
}

func answer(status int, contentType, body string, header ...string) func(http.ResponseWriter, *http.Request, <-chan struct{}) {
	return func(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// hang never answers: it returns when the client gives up or the test ends.
func hang(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
	select {
	case <-r.Context().Done():
	case <-release:
	}
}

// logBuffer collects JSON log lines written by concurrent goroutines.
type logBuffer struct {
	mu  sync.Mutex // protects buf
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines are the logged records with message msg.
func (b *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

type fixture struct {
	pool *Pool
	c    *Client
	logs *logBuffer
}

// newFixture builds one tier "small" of the given upstreams, with a client
// waiting firstByte for headers and a breaker opening after failures.
func newFixture(t *testing.T, firstByte time.Duration, failures uint32, ups ...*upstream) *fixture {
	t.Helper()
	cfg := config.Default()
	cfg.Breaker = config.Breaker{ConsecutiveFailures: failures, OpenFor: time.Hour, HalfOpenRequests: 1}
	tier := config.Tier{Name: "small"}
	for _, u := range ups {
		tier.Endpoints = append(tier.Endpoints, config.Endpoint{URL: u.URL + "/v1", Model: "small-model", Weight: 1})
	}
	cfg.Tiers = []config.Tier{tier}
	to := cfg.Timeouts
	to.FirstByte = firstByte
	c := NewClient(to)
	t.Cleanup(c.CloseIdle)
	logs := &logBuffer{}
	r := NewRegistry(c)
	r.SetLogger(slog.New(slog.NewJSONHandler(logs, nil)))
	return &fixture{pool: r.Pools(&cfg)["small"], c: c, logs: logs}
}

func chatRequest() *Request {
	return &Request{Path: "/chat/completions", Body: func(e *Endpoint) []byte {
		return []byte(`{"model":"` + e.Model + `","messages":[{"role":"user","content":"hi"}]}`)
	}}
}

// noAddress fails when an error meant for clients names an upstream.
func noAddress(t *testing.T, err error, ups ...*upstream) {
	t.Helper()
	msg := err.Error()
	if strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "http://") || strings.Contains(msg, "/v1") {
		t.Fatalf("error names an address: %q", msg)
	}
	for _, u := range ups {
		if strings.Contains(msg, strings.TrimPrefix(u.URL, "http://")) {
			t.Fatalf("error names %s: %q", u.URL, msg)
		}
	}
}

func TestReadAnswerChecksTheAnswer(t *testing.T) {
	deep := `{"choices":[],"x":` + strings.Repeat("[", 1<<20) + strings.Repeat("]", 1<<20) + `}`
	for _, tc := range []struct {
		name, contentType, body string
		max                     int64
		want                    error
	}{
		{"completion", "application/json", okAnswer, 1 << 20, nil},
		{"with charset", "application/json; charset=utf-8", okAnswer, 1 << 20, nil},
		{"html", "text/html", "<html><body>502 Bad Gateway</body></html>", 1 << 20, ErrInvalidResponse},
		{"html called json", "application/json", "<html><body>oops</body></html>", 1 << 20, ErrInvalidResponse},
		{"truncated json", "application/json", okAnswer[:60], 1 << 20, ErrInvalidResponse},
		{"sse for a non-stream", "text/event-stream", "data: " + okAnswer + "\n\ndata: [DONE]\n\n", 1 << 20, ErrInvalidResponse},
		{"sse called json", "application/json", "data: " + okAnswer + "\n\n", 1 << 20, ErrInvalidResponse},
		{"no content type", "", okAnswer, 1 << 20, ErrInvalidResponse},
		{"no choices", "application/json", `{"object":"error","message":"x"}`, 1 << 20, ErrInvalidResponse},
		{"choices not an array", "application/json", `{"choices":{"0":{}}}`, 1 << 20, ErrInvalidResponse},
		{"an array", "application/json", `[` + okAnswer + `]`, 1 << 20, ErrInvalidResponse},
		{"deep nesting", "application/json", deep, 4 << 20, ErrInvalidResponse},
		{"too large", "application/json", okAnswer, 100, ErrInvalidResponse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
				w.Header()["Content-Type"] = []string{tc.contentType} // "" stays empty, not sniffed
				io.WriteString(w, tc.body)
			})
			f := newFixture(t, 5*time.Second, 5, up)
			resp, err := f.pool.Send(context.Background(), f.c, chatRequest(), 0)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			data, err := resp.ReadAnswer(time.Second, tc.max)
			resp.Finish(err)
			if !errors.Is(err, tc.want) || tc.want == nil && string(data) != tc.body {
				t.Fatalf("ReadAnswer = %.60q, %v; want %v", data, err, tc.want)
			}
			if err != nil {
				noAddress(t, err, up)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("took %v", d)
			}
			if got := resp.Endpoint.ErrorRate() > 0; got != (tc.want != nil) {
				t.Fatalf("error rate %v after %v", resp.Endpoint.ErrorRate(), err)
			}
		})
	}
}

func TestReadAnswerBrokenOff(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, okAnswer[:50]) // the server closes the connection short
	})
	f := newFixture(t, 5*time.Second, 5, up)
	resp, err := f.pool.Send(context.Background(), f.c, chatRequest(), 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = resp.ReadAnswer(time.Second, 1<<20)
	resp.Finish(err)
	if !errors.Is(err, ErrInvalidResponse) || !strings.Contains(err.Error(), "broke off") {
		t.Fatalf("err %v", err)
	}
	noAddress(t, err, up)
}

// stalled sends headers and the start of an answer, then nothing.
func stalled(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"choices":[`)
	w.(http.Flusher).Flush()
	hang(w, r, release)
}

func TestReadAnswerStalledBodyTimesOut(t *testing.T) {
	up := newUpstream(t, stalled)
	f := newFixture(t, 5*time.Second, 1, up)
	resp, err := f.pool.Send(context.Background(), f.c, chatRequest(), 0)
	if err != nil {
		t.Fatal(err)
	}
	const idle = 300 * time.Millisecond
	start := time.Now()
	_, err = resp.ReadAnswer(idle, 1<<20)
	took := time.Since(start)
	resp.Finish(err)
	if !errors.Is(err, ErrTimeout) || errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want a timeout", err)
	}
	if took < idle || took > idle+time.Second {
		t.Fatalf("gave up after %v, want about %v", took, idle)
	}
	if resp.Endpoint.BreakerState() != gobreaker.StateOpen {
		t.Fatal("a stalled answer did not count against the endpoint")
	}
}

func TestReadAnswerClientGone(t *testing.T) {
	up := newUpstream(t, stalled)
	f := newFixture(t, 5*time.Second, 1, up)
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := f.pool.Send(ctx, f.c, chatRequest(), 0)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = resp.ReadAnswer(5*time.Second, 1<<20)
	resp.Finish(err)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if resp.Endpoint.BreakerState() != gobreaker.StateClosed {
		t.Fatal("a client leaving counted against the endpoint")
	}
}

func TestBodyNotBoundToFirstByte(t *testing.T) {
	// Headers come at once, the body after longer than first_byte: the
	// first-byte timer must not cut the body.
	up := newUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		time.Sleep(600 * time.Millisecond)
		io.WriteString(w, okAnswer)
	})
	f := newFixture(t, 200*time.Millisecond, 5, up)
	resp, err := f.pool.Send(context.Background(), f.c, chatRequest(), 0)
	if err != nil {
		t.Fatal(err)
	}
	data, err := resp.ReadAnswer(2*time.Second, 1<<20)
	resp.Finish(err)
	if err != nil || string(data) != okAnswer {
		t.Fatalf("%q %v", data, err)
	}
}

func TestFirstByteIsPerAttempt(t *testing.T) {
	ups := []*upstream{newUpstream(t, hang), newUpstream(t, hang), newUpstream(t, hang)}
	f := newFixture(t, 200*time.Millisecond, 5, ups...)
	start := time.Now()
	_, err := f.pool.Send(context.Background(), f.c, chatRequest(), 2)
	took := time.Since(start)
	var se *SendError
	if !errors.Is(err, ErrTimeout) || !errors.As(err, &se) || len(se.Tried) != 3 {
		t.Fatalf("err %v, want a timeout after 3 tries", err)
	}
	if took < 600*time.Millisecond || took > 3*time.Second {
		t.Fatalf("took %v, want about 3 × 200ms", took)
	}
	noAddress(t, err, ups...)
}

func TestDeadlineBoundsTheAttemptChain(t *testing.T) {
	// Three hung endpoints, 60s first byte each: the chain's deadline, not
	// 3 × 60s, decides when Send gives up.
	ups := []*upstream{newUpstream(t, hang), newUpstream(t, hang), newUpstream(t, hang)}
	f := newFixture(t, 60*time.Second, 5, ups...)
	req := chatRequest()
	start := time.Now()
	req.Deadline = start.Add(time.Second)
	_, err := f.pool.Send(context.Background(), f.c, req, 2)
	took := time.Since(start)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err %v, want ErrTimeout", err)
	}
	if took < time.Second || took > 2500*time.Millisecond { // not 3 × 60s
		t.Fatalf("took %v, want about 1s", took)
	}
	if e := TriedEndpoint(err); e == nil || e.Tier != "small" || e.Model != "small-model" {
		t.Fatalf("tried %+v", e)
	}
	noAddress(t, err, ups...)
	// Past the deadline nothing is sent at all.
	before := ups[0].hits.Load() + ups[1].hits.Load() + ups[2].hits.Load()
	if _, err := f.pool.Send(context.Background(), f.c, req, 2); !errors.Is(err, ErrTimeout) || TriedEndpoint(err) != nil {
		t.Fatalf("after the deadline: %v", err)
	}
	if after := ups[0].hits.Load() + ups[1].hits.Load() + ups[2].hits.Load(); after != before {
		t.Fatal("sent a request after the deadline")
	}
}

func TestTooManyRequestsServedBySibling(t *testing.T) {
	busy := newUpstream(t, answer(http.StatusTooManyRequests, "application/json", `{"error":{"message":"slow down"}}`, "Retry-After", "2"))
	idle := newUpstream(t, answer(http.StatusOK, "application/json", okAnswer))
	f := newFixture(t, 5*time.Second, 1, busy, idle)
	send := func() {
		t.Helper()
		resp, err := f.pool.Send(context.Background(), f.c, chatRequest(), 1)
		if err != nil {
			t.Fatalf("a 429 reached the caller: %v", err)
		}
		_, err = resp.ReadAnswer(time.Second, 1<<20)
		resp.Finish(err)
		if err != nil || resp.Endpoint.URL != idle.URL+"/v1" {
			t.Fatalf("served by %s: %v", resp.Endpoint.URL, err)
		}
	}
	for i := 0; busy.hits.Load() == 0; i++ {
		if i == 200 {
			t.Fatal("the balancer never picked the busy endpoint")
		}
		send()
	}
	for range 20 { // the busy endpoint cools down: not asked again
		send()
	}
	if n := busy.hits.Load(); n != 1 {
		t.Fatalf("busy endpoint asked %d times during its cool-down", n)
	}
	e := f.pool.Endpoints[0]
	if left := e.CoolDownLeft(); left <= time.Second || left > 2*time.Second || e.Available() {
		t.Fatalf("cool-down left %v, available %v", left, e.Available())
	}
	if e.BreakerState() != gobreaker.StateClosed || e.ErrorRate() != 0 {
		t.Fatal("a 429 counted as the endpoint's failure")
	}
	lines := f.logs.lines(t, "backend cooling down")
	if len(lines) != 1 || lines[0]["status"] != 429.0 || lines[0]["url"] != busy.URL+"/v1" ||
		lines[0]["tier"] != "small" || lines[0]["retry_after"] != float64(2*time.Second) {
		t.Fatalf("cool-down lines %v", lines)
	}
	if n := len(f.logs.lines(t, "backend request failed")); n != 0 {
		t.Fatalf("%d failure lines for a 429", n)
	}
}

func TestEveryEndpointBusyIsUnavailable(t *testing.T) {
	a := newUpstream(t, answer(http.StatusTooManyRequests, "application/json", `{}`, "Retry-After", "5"))
	b := newUpstream(t, answer(http.StatusServiceUnavailable, "text/plain", "overloaded",
		"Retry-After", time.Now().Add(3*time.Second).UTC().Format(http.TimeFormat)))
	f := newFixture(t, 5*time.Second, 5, a, b)
	_, err := f.pool.Send(context.Background(), f.c, chatRequest(), 2)
	var se *SendError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &se) || len(se.Tried) != 2 {
		t.Fatalf("err %v, want ErrUnavailable after both", err)
	}
	// The smallest cool-down: b's HTTP date, about 3s (the date has whole seconds).
	if ra := RetryAfter(err); ra < 1500*time.Millisecond || ra > 3*time.Second {
		t.Fatalf("retry after %v, want about 3s", ra)
	}
	var ue *UpstreamError
	if errors.As(err, &ue) {
		t.Fatal("an upstream status is passed on as the answer")
	}
	noAddress(t, err, a, b)
	// Both cool down: the next request is not sent at all.
	_, err = f.pool.Send(context.Background(), f.c, chatRequest(), 2)
	if !errors.Is(err, ErrUnavailable) || TriedEndpoint(err) != nil || RetryAfter(err) == 0 {
		t.Fatalf("err %v", err)
	}
	if a.hits.Load() != 1 || b.hits.Load() != 1 {
		t.Fatalf("hits %d %d", a.hits.Load(), b.hits.Load())
	}
}

func TestClientErrorIsNotRetried(t *testing.T) {
	bad := newUpstream(t, answer(http.StatusBadRequest, "application/json", `{"error":{"message":"context too long"}}`))
	good := newUpstream(t, answer(http.StatusOK, "application/json", okAnswer))
	f := newFixture(t, 5*time.Second, 1, bad, good)
	for i := 0; bad.hits.Load() < 3; i++ {
		if i == 300 {
			t.Fatal("the balancer never picked the endpoint")
		}
		before := good.hits.Load()
		resp, err := f.pool.Send(context.Background(), f.c, chatRequest(), 2)
		if err == nil {
			resp.Finish(nil)
			continue
		}
		var ue *UpstreamError
		if !errors.As(err, &ue) || ue.Status != http.StatusBadRequest || good.hits.Load() != before {
			t.Fatalf("err %v: a 400 must reach the caller without a retry", err)
		}
		if e := TriedEndpoint(err); e != f.pool.Endpoints[0] {
			t.Fatalf("tried %v", e)
		}
		noAddress(t, err, bad, good)
	}
	if !f.pool.Endpoints[0].Available() {
		t.Fatal("a client's 400 counted against the endpoint")
	}
}

func TestBreakerOpensOnInvalidAnswers(t *testing.T) {
	up := newUpstream(t, answer(http.StatusOK, "text/html", "<html>maintenance</html>"))
	f := newFixture(t, 5*time.Second, 3, up)
	for range 3 {
		resp, err := f.pool.Send(context.Background(), f.c, chatRequest(), 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = resp.ReadAnswer(time.Second, 1<<20)
		if !errors.Is(err, ErrInvalidResponse) {
			t.Fatalf("err %v", err)
		}
		resp.Finish(err)
	}
	e := f.pool.Endpoints[0]
	if e.BreakerState() != gobreaker.StateOpen {
		t.Fatalf("breaker %v after 3 invalid answers", e.BreakerState())
	}
	_, err := f.pool.Send(context.Background(), f.c, chatRequest(), 0)
	if !errors.Is(err, ErrUnavailable) || up.hits.Load() != 3 {
		t.Fatalf("err %v, hits %d", err, up.hits.Load())
	}
	lines := f.logs.lines(t, "backend breaker state changed")
	if len(lines) != 1 || lines[0]["from"] != "closed" || lines[0]["to"] != "open" || lines[0]["level"] != "WARN" ||
		lines[0]["tier"] != "small" || lines[0]["model"] != "small-model" || lines[0]["url"] != up.URL+"/v1" {
		t.Fatalf("breaker lines %v", lines)
	}
	// Three failures within a second: one line; the next one, a second
	// later, counts the two left out.
	fails := f.logs.lines(t, "backend request failed")
	if len(fails) != 1 || fails[0]["suppressed"] != 0.0 || fails[0]["error_type"] != "invalid_response" {
		t.Fatalf("failure lines %v", fails)
	}
	e.logs.last.Store(time.Now().Add(-2 * failureLogInterval).UnixNano())
	e.logFailure(ErrTimeout)
	if fails = f.logs.lines(t, "backend request failed"); len(fails) != 2 || fails[1]["suppressed"] != 2.0 || fails[1]["error_type"] != "timeout" {
		t.Fatalf("failure lines %v", fails)
	}
}

func TestSendErrorsNameNoAddress(t *testing.T) {
	gone := newUpstream(t, answer(http.StatusOK, "application/json", okAnswer))
	gone.Close() // connection refused
	broken := newUpstream(t, answer(http.StatusBadGateway, "text/plain", "bad gateway"))
	f := newFixture(t, 5*time.Second, 5, gone, broken)
	_, err := f.pool.Send(context.Background(), f.c, chatRequest(), 1)
	var se *SendError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &se) || len(se.Tried) != 2 {
		t.Fatalf("err %v", err)
	}
	noAddress(t, err, gone, broken)
	if !strings.Contains(err.Error(), `tier "small"`) {
		t.Fatalf("error %q does not name the tier", err)
	}
	// The log has what the client does not: the URL and the cause.
	fails := f.logs.lines(t, "backend request failed")
	if len(fails) != 2 {
		t.Fatalf("failure lines %v", fails)
	}
	for _, l := range fails {
		if !strings.HasPrefix(l["url"].(string), "http://127.0.0.1:") {
			t.Fatalf("failure line %v", l)
		}
	}
}

func TestSendCancelledByClient(t *testing.T) {
	up := newUpstream(t, hang)
	f := newFixture(t, 5*time.Second, 1, up)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := f.pool.Send(ctx, f.c, chatRequest(), 2)
	if !errors.Is(err, context.Canceled) || TriedEndpoint(err) != f.pool.Endpoints[0] {
		t.Fatalf("err %v", err)
	}
	if !f.pool.Endpoints[0].Available() {
		t.Fatal("a client leaving counted against the endpoint")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"3", 3 * time.Second, true}, {" 0 ", 0, true}, {"-1", 0, false}, {"", 0, false}, {"soon", 0, false},
		{"86400", maxCoolDown, true}, {"99999999999999999999", 0, false},
		{now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{now.Add(time.Hour).Format(http.TimeFormat), maxCoolDown, true},
	} {
		if got, ok := parseRetryAfter(tc.in, now); got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestStreamThatIsNotSSEIsRetried(t *testing.T) {
	// One endpoint ignores "stream": true and answers JSON: that is caught
	// before the first byte and the sibling serves the stream.
	plain := newUpstream(t, answer(http.StatusOK, "application/json", okAnswer))
	sse := newUpstream(t, answer(http.StatusOK, "text/event-stream; charset=utf-8", streamChunk+"data: [DONE]\n\n"))
	f := newFixture(t, 5*time.Second, 5, plain, sse)
	req := chatRequest()
	req.Stream = true
	for i := 0; plain.hits.Load() == 0; i++ {
		if i == 200 {
			t.Fatal("the balancer never picked the plain endpoint")
		}
		resp, err := f.pool.Send(context.Background(), f.c, req, 1)
		if err != nil {
			t.Fatal(err)
		}
		_, err = scanAll(NewStreamScanner(resp.Body))
		resp.Finish(nil)
		if err != io.EOF || resp.Endpoint != f.pool.Endpoints[1] {
			t.Fatalf("served by %v: %v", resp.Endpoint.URL, err)
		}
	}
	if f.pool.Endpoints[0].ErrorRate() == 0 {
		t.Fatal("a JSON answer to a stream did not count against the endpoint")
	}
	// With no sibling, the caller learns why.
	alone := newFixture(t, 5*time.Second, 5, plain)
	_, err := alone.pool.Send(context.Background(), alone.c, req, 1)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "invalid answer") {
		t.Fatalf("err %v", err)
	}
	noAddress(t, err, plain)
}

// BenchmarkSendReadAnswer is one non-streaming completion through Send,
// ReadAnswer and Finish over loopback: the backends package's share of a
// request (the upstream here answers at once).
func BenchmarkSendReadAnswer(b *testing.B) {
	body := []byte(okAnswer)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	defer srv.Close()
	cfg := config.Default()
	cfg.Tiers = []config.Tier{{Name: "small", Endpoints: []config.Endpoint{{URL: srv.URL + "/v1", Model: "m", Weight: 1}}}}
	c := NewClient(cfg.Timeouts)
	defer c.CloseIdle()
	pool := NewRegistry(c).Pools(&cfg)["small"]
	req := chatRequest()
	req.Deadline = time.Now().Add(time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		resp, err := pool.Send(context.Background(), c, req, 2)
		if err != nil {
			b.Fatal(err)
		}
		_, err = resp.ReadAnswer(30*time.Second, 64<<20)
		resp.Finish(err)
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckAnswer is the check of a typical non-streaming answer.
func BenchmarkCheckAnswer(b *testing.B) {
	body := []byte(okAnswer)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if !validJSON(body) || !gjson.Get(view(body), "choices").IsArray() {
			b.Fatal("invalid")
		}
	}
}
