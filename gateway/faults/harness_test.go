package faults_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/gateway"
)

// sharedRedis is the Redis every engineer's tests share: keys go under a
// prefix of the test's own and nothing else is touched.
const sharedRedis = "127.0.0.1:6379"

// harness is one gateway wired as cmd/cascade wires it: a RedisRecorder on
// a client of its own (no client retries, context deadlines) and a shared
// client for reads. It remembers every request sent through it, with the
// outcome the client's view implies, to compare with the records.
type harness struct {
	t      *testing.T
	g      *gateway.Gateway
	base   string // http://127.0.0.1:port
	rec    *costing.RedisRecorder
	rdb    *redis.Client // reads the records back
	prefix string
	idTag  string

	mu   sync.Mutex // guards sent and n
	sent map[string]want
	n    int

	stopOnce sync.Once
	stopErr  error
}

// want is what the record of one request must say.
type want struct {
	outcome string
	tier    string // "" when any tier may be named
	move    string // "", "up" or "down"
}

// startHarness serves a gateway for cfg recording to the Redis at addr.
func startHarness(t *testing.T, cfg *config.Config, addr string) *harness {
	t.Helper()
	h := &harness{t: t, sent: map[string]want{}, idTag: strconv.FormatUint(rand.Uint64()&0xffffff, 16)}
	h.prefix = fmt.Sprintf("test:faults:%s:%x:", t.Name(), rand.Uint64())
	h.rdb = redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := h.rdb.Ping(ctx).Err(); err != nil {
		h.rdb.Close()
		t.Fatalf("redis at %s: %v", addr, err)
	}
	t.Cleanup(h.deleteKeys) // runs last: after the gateway and recorder stopped
	recClient := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { recClient.Close() })
	h.rec = costing.NewRedisRecorder(recClient, h.prefix, config.Recorder{FlushInterval: 20 * time.Millisecond})

	cfg.Redis.Prefix = h.prefix // the calibration sync writes there too
	g, err := gateway.New(cfg, gateway.Options{Recorder: h.rec, Redis: h.rdb})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := g.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	h.g, h.base = g, "http://"+ln.Addr().String()
	t.Cleanup(func() { h.stop(5 * time.Second) })
	return h
}

// deleteKeys removes the test's keys from Redis.
func (h *harness) deleteKeys() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	iter := h.rdb.Scan(ctx, 0, h.prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if len(keys) > 0 {
		h.rdb.Del(ctx, keys...)
	}
	h.rdb.Close()
}

// stop shuts the gateway down with the given grace, then drains the
// recorder with a deadline of its own, as serve does. It runs once; later
// calls return the first result.
func (h *harness) stop(grace time.Duration) error {
	h.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		h.stopErr = h.g.Shutdown(ctx)
		cancel()
		rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer rcancel()
		if err := h.rec.Close(rctx); err != nil {
			h.stopErr = errors.Join(h.stopErr, fmt.Errorf("recorder drain: %w (%+v)", err, h.rec.Stats()))
		}
	})
	return h.stopErr
}

// newID returns a fresh request id, sent as X-Request-Id so that the
// record can be found by it.
func (h *harness) newID() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	return fmt.Sprintf("f%s-%05d", h.idTag, h.n)
}

// expect notes what the record of request id must say.
func (h *harness) expect(id string, w want) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, dup := h.sent[id]; dup {
		h.t.Errorf("request id %s sent twice", id)
	}
	h.sent[id] = w
}

// client is the official SDK pointed at the gateway, without retries: a
// retry would be a second request with the same id.
func (h *harness) client() openai.Client {
	return openai.NewClient(option.WithBaseURL(h.base+"/v1"), option.WithAPIKey("test"),
		option.WithMaxRetries(0), option.WithRequestTimeout(30*time.Second))
}

func chatParams(model, prompt string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
	}
}

// reply is what a client saw of one non-streaming request.
type reply struct {
	id      string
	status  int
	header  http.Header
	code    string // the error's code, when it failed
	message string
	content string
	elapsed time.Duration
	err     error // a failure that is not an API error (connection)
}

// chat sends one non-streaming chat request through the SDK.
func (h *harness) chat(ctx context.Context, model, prompt string) reply {
	id := h.newID()
	var hr *http.Response
	start := time.Now()
	c := h.client()
	res, err := c.Chat.Completions.New(ctx, chatParams(model, prompt),
		option.WithHeader("X-Request-Id", id), option.WithResponseInto(&hr))
	r := reply{id: id, elapsed: time.Since(start)}
	var ae *openai.Error
	switch {
	case err == nil:
		r.status, r.header = hr.StatusCode, hr.Header
		if len(res.Choices) > 0 {
			r.content = res.Choices[0].Message.Content
		}
	case errors.As(err, &ae):
		r.status, r.code, r.message = ae.StatusCode, ae.Code, ae.Message
		if ae.Response != nil {
			r.header = ae.Response.Header
		}
	default:
		r.err = err
	}
	return r
}

// servedWant is the record a 200 implies: served on the tier the router
// chose, or moved as the X-Cascade-Fallback header says.
func servedWant(r reply) want {
	w := want{outcome: "served", tier: r.header.Get("X-Cascade-Tier")}
	switch r.header.Get("X-Cascade-Fallback") {
	case "up":
		w.outcome, w.move = "fallback_up", "up"
	case "down":
		w.outcome, w.move = "degraded_down", "down"
	}
	return w
}

// checkNoAddress fails when a client-facing message names an address.
func checkNoAddress(t *testing.T, msg string) {
	t.Helper()
	if strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "http://") {
		t.Errorf("client-facing message names an internal address: %q", msg)
	}
}

// records stops the harness and checks that Redis holds exactly one record
// per request sent, each as expected, that the recorder's written count is
// the number sent with nothing dropped, and that the hourly rollups count
// every request once. It returns the stream entries by request id.
func (h *harness) records() map[string]map[string]string {
	t := h.t
	t.Helper()
	if err := h.stop(5 * time.Second); err != nil {
		t.Logf("stop: %v", err)
	}
	h.mu.Lock()
	sent := len(h.sent)
	h.mu.Unlock()
	st := h.rec.Stats()
	if st.Written != int64(sent) || st.Dropped != 0 || st.Queued != 0 {
		t.Errorf("recorder stats %+v, want written = %d sent, none dropped or queued", st, sent)
	}
	ctx := context.Background()
	got := map[string]map[string]string{}
	for _, key := range h.keys(h.prefix + "req:*") {
		entries, err := h.rdb.XRange(ctx, key, "-", "+").Result()
		if err != nil {
			t.Fatalf("XRANGE %s: %v", key, err)
		}
		for _, e := range entries {
			f := make(map[string]string, len(e.Values))
			for k, v := range e.Values {
				f[k], _ = v.(string)
			}
			if _, dup := got[f["id"]]; dup {
				t.Errorf("request %s recorded twice", f["id"])
			}
			got[f["id"]] = f
		}
	}
	if len(got) != sent {
		t.Errorf("%d records in Redis, %d requests sent", len(got), sent)
	}
	wantRoll := map[string]int64{"requests": int64(sent)}
	for id, w := range h.sent {
		f, ok := got[id]
		if !ok {
			t.Errorf("request %s (%s) has no record", id, w.outcome)
			continue
		}
		if f["outcome"] != w.outcome || (w.tier != "" && f["tier"] != w.tier) || f["move"] != w.move {
			t.Errorf("record of %s: outcome %q tier %q move %q, want %q %q %q", id, f["outcome"], f["tier"], f["move"], w.outcome, w.tier, w.move)
		}
		if f["tier"] == "" || f["input_tokens"] == "0" || (f["endpoint"] == "") != (f["model"] == "") {
			t.Errorf("record of %s does not say who was asked or what it cost: %v", id, f)
		}
		switch w.outcome {
		case "upstream_error", "timeout", "invalid_response", "shutdown":
			wantRoll["errors"]++
		}
		switch w.move {
		case "up":
			wantRoll["fallbacks_up"]++
		case "down":
			wantRoll["degraded_down"]++
		}
	}
	for id := range got {
		if _, ok := h.sent[id]; !ok {
			t.Errorf("record %s matches no request sent", id)
		}
	}
	roll := map[string]int64{}
	for _, key := range h.keys(h.prefix + "h:all:*") {
		vals, err := h.rdb.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		for f := range wantRoll {
			n, _ := strconv.ParseInt(vals[f], 10, 64)
			roll[f] += n
		}
	}
	for f, n := range wantRoll {
		if roll[f] != n {
			t.Errorf("hourly rollups count %d %s, want %d", roll[f], f, n)
		}
	}
	return got
}

func (h *harness) keys(pattern string) []string {
	ctx := context.Background()
	var keys []string
	iter := h.rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		h.t.Fatalf("SCAN %s: %v", pattern, err)
	}
	return keys
}

// countOutcomes counts records by outcome.
func countOutcomes(recs map[string]map[string]string) map[string]int {
	n := map[string]int{}
	for _, f := range recs {
		n[f["outcome"]]++
	}
	return n
}

// twoTiers is a config whose small and large tiers are the given /v1 base
// URLs, with short breaker and timeout settings fit for tests.
func twoTiers(t *testing.T, small, large []string) *config.Config {
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
	c.Routing.Calibration.Shared = false
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

// simBackend runs a simulator on a loopback port that can be killed (its
// listener and connections closed) and started again on the same port.
type simBackend struct {
	t    *testing.T
	sim  *sim.Server
	addr string
	mu   sync.Mutex // guards srv
	srv  *http.Server
}

func startSim(t *testing.T, c sim.Config) *simBackend {
	t.Helper()
	b := &simBackend{t: t, sim: sim.New(c), addr: "127.0.0.1:0"}
	b.start()
	t.Cleanup(func() {
		b.sim.Close() // ends hanging and stalled requests
		b.kill()
	})
	return b
}

// url is the backend's /v1 base URL.
func (b *simBackend) url() string { return "http://" + b.addr + "/v1" }

// start serves the simulator on b.addr (the same port after a kill).
func (b *simBackend) start() {
	b.t.Helper()
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ln, err = net.Listen("tcp", b.addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		b.t.Fatalf("restart backend on %s: %v", b.addr, err)
	}
	b.addr = ln.Addr().String()
	srv := &http.Server{Handler: b.sim}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go srv.Serve(ln)
}

// kill closes the listener and every connection at once: requests in
// flight are cut, new ones refused.
func (b *simBackend) kill() {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	b.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// redisServer is a redis-server of the test's own on a free port. Every
// write is synced to its append-only file before the reply, so a SIGKILL
// loses nothing it acknowledged.
type redisServer struct {
	t    *testing.T
	bin  string
	dir  string
	addr string
	cmd  *exec.Cmd
}

// startRedisServer starts a redis-server, or skips the test when there is
// none on PATH (fails under CI=true).
func startRedisServer(t *testing.T) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server not on PATH (%v): CI must run the fault suite", err)
		}
		t.Skipf("redis-server not on PATH (%v): install Redis to run this test", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &redisServer{t: t, bin: bin, dir: t.TempDir(), addr: ln.Addr().String()}
	ln.Close()
	s.start()
	t.Cleanup(s.kill)
	return s
}

// start runs redis-server on s.addr with the data s.dir holds, and waits
// until it answers.
func (s *redisServer) start() {
	s.t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	log, err := os.OpenFile(filepath.Join(s.dir, "redis.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	defer log.Close()
	s.cmd = exec.Command(s.bin, "--bind", "127.0.0.1", "--port", port, "--dir", s.dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always")
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); c.Ping(context.Background()).Err() != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server on %s does not answer:\n%s", s.addr, out)
		}
	}
}

// kill stops redis-server with SIGKILL: no shutdown, no final save.
func (s *redisServer) kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
	s.cmd = nil
}

// optionID sends id as the request's X-Request-Id.
func optionID(id string) option.RequestOption { return option.WithHeader("X-Request-Id", id) }
