package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cascade-gateway/cascade/config"
)

// childEnv makes the test binary run a gateway (runGatewayChild) instead of
// the tests, so that its memory can be measured apart from the clients'.
const childEnv = "CASCADE_TEST_GATEWAY_CHILD"

// answerJSON is a minimal non-streaming chat completion.
const answerJSON = `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,` +
	`"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`

// discardUpstream reads each request body to its end, keeping none of it,
// and answers answerJSON.
func discardUpstream() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, answerJSON)
	}))
}

// memoryConfig is a default config whose two tiers are upstream.
func memoryConfig(upstream string) *config.Config {
	c := config.Default()
	c.Tiers = []config.Tier{
		{Name: "small", Endpoints: []config.Endpoint{{URL: upstream + "/v1", Model: "small-model", Weight: 1}}},
		{Name: "large", Endpoints: []config.Endpoint{{URL: upstream + "/v1", Model: "large-model", Weight: 1}}},
	}
	return &c
}

// runGatewayChild serves a gateway with the default limits in front of a
// discarding upstream, prints its address and runs until stdin closes.
func runGatewayChild() {
	up := discardUpstream()
	defer up.Close()
	g, err := New(memoryConfig(up.URL), Options{})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	go g.Serve(ln)
	fmt.Println(ln.Addr())
	io.Copy(io.Discard, os.Stdin)
}

// largeChat is a valid chat request of about size bytes whose long
// content is full of escapes (each unescaped copy is as big as it can be).
func largeChat(size int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"model":"auto","messages":[{"role":"user","content":"`)
	for b.Len() < size-64 {
		b.WriteString(`line \"quoted\" and a tab\t\n`)
	}
	b.WriteString(`"}]}`)
	return b.Bytes()
}

// Peak memory per request stays within 3 × max_body_bytes: everything one
// request of the largest admitted size allocates (the decoded prompt,
// unescaped, and the rewritten body sent upstream; the body as read sits in
// fasthttp's pooled buffer) adds up to less than that. A compressed body
// adds its inflated copy (the compressed one goes back to the pool): the
// live peak stays at 3 ×, short-lived garbage included it is 4 ×.
func TestRequestMemoryBound(t *testing.T) {
	up := discardUpstream()
	defer up.Close()
	cfg := memoryConfig(up.URL)
	_, base := startGateway(t, cfg, Options{})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	large := largeChat(cfg.MaxBodyBytes - 1024)
	for _, tc := range []struct {
		name  string
		body  []byte
		enc   string
		bound int // × max_body_bytes
	}{
		{"fast path", large, "", 3},
		// A key in another case sends the body through encoding/json.
		{"strict path", bytes.Replace(large, []byte(`"model"`), []byte(`"Model"`), 1), "", 3},
		{"gzip", compress(t, "gzip", func(w io.Writer) { w.Write(large) }), "gzip", 4},
	} {
		t.Run(tc.name, func(t *testing.T) { requestMemory(t, client, base, tc.body, tc.enc, tc.bound*cfg.MaxBodyBytes) })
	}
}

func requestMemory(t *testing.T, client *http.Client, base string, body []byte, enc string, bound int) {
	send := func() {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if enc != "" {
			req.Header.Set("Content-Encoding", enc)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, raw)
		}
	}
	send() // warm up pools and connections
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	send()
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("one %d-byte request allocated %.2f MB (bound %.2f MB)", len(body), float64(alloc)/1e6, float64(bound)/1e6)
	if alloc > uint64(bound) {
		t.Fatalf("one request allocated %d bytes, more than %d", alloc, bound)
	}
}

// procStatus reads a kB field of /proc/pid/status, in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// rssBound is the documented bound on a gateway's peak resident memory
// with default settings while 100 clients each send a 4 MiB body at once
// (README, "Limits"): 2 GiB. The bodies alone are 400 MiB as read; each
// valid one costs at most 3 × 4 MiB while it is handled, and the Go heap
// may grow to twice what is live before a collection (GOGC=100).
const rssBound = 2 << 30

// 100 concurrent 4 MiB bodies of each kind (valid requests forwarded
// upstream, 4 MiB of nesting, 15 KB gzip bombs) keep the gateway process's
// peak RSS (VmHWM) under rssBound, and it keeps serving.
func TestConcurrentLargeBodiesRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 800 MB over loopback")
	}
	if raceEnabled {
		t.Skip("the race detector's shadow memory makes RSS meaningless")
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.HasPrefix(line, "error") {
		t.Fatalf("child gateway: %q %v", line, err)
	}
	base := "http://" + strings.TrimSpace(line)
	pid := cmd.Process.Pid
	idle := procStatus(t, pid, "VmRSS")

	const maxBody = 4 << 20
	var nested bytes.Buffer
	nestedBomb(&nested, (maxBody-100)/2)
	bomb := compress(t, "gzip", func(w io.Writer) { nestedBomb(w, 8_000_000) })
	tr := &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: 100}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for _, kind := range []struct {
		name   string
		body   []byte
		enc    string
		status int
	}{
		{"valid", largeChat(maxBody - 1024), "", 200},
		{"nested", nested.Bytes(), "", 400},
		{"gzip bomb", bomb, "gzip", 413},
	} {
		var wg sync.WaitGroup
		statuses := make([]int, 100)
		for i := range statuses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(kind.body))
				req.Header.Set("Content-Type", "application/json")
				if kind.enc != "" {
					req.Header.Set("Content-Encoding", kind.enc)
				}
				resp, err := client.Do(req)
				if err != nil {
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				statuses[i] = resp.StatusCode
			}()
		}
		wg.Wait()
		for i, s := range statuses {
			if s != kind.status {
				t.Fatalf("%s: request %d got %d, want %d", kind.name, i, s, kind.status)
			}
		}
		t.Logf("%s: peak RSS so far %d MiB", kind.name, procStatus(t, pid, "VmHWM")>>20)
	}
	peak := procStatus(t, pid, "VmHWM")
	t.Logf("gateway RSS idle %d MiB, peak %d MiB over 300 concurrent 4 MiB requests (bound %d MiB)", idle>>20, peak>>20, rssBound>>20)
	if peak > rssBound {
		t.Fatalf("peak RSS %d MiB exceeds the documented %d MiB", peak>>20, rssBound>>20)
	}
	resp, err := client.Get(base + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz afterwards: %v %v", resp, err)
	}
	resp.Body.Close()
}
