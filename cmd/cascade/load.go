package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
	"github.com/valyala/fasthttp"
)

func init() {
	register("load", "open-loop constant-rate load against an OpenAI-compatible URL", runLoad)
}

// loadConfig is one load run.
type loadConfig struct {
	URL         string // base URL, e.g. http://127.0.0.1:8080/v1
	Rate        float64
	Duration    time.Duration
	Warmup      time.Duration
	Stream      bool
	Model       string
	MaxTokens   int
	Concurrency int
	Timeout     time.Duration
	Bodies      [][]byte // request bodies, used in turn
	PID         int      // process whose CPU time is reported (0: none)
}

// loadReport is what a run measured. Latency is taken from the moment the
// schedule said a request was due, not from when it was actually sent, so a
// slow server cannot hide its slowness by delaying the next requests
// (coordinated omission); Service is from the actual send.
type loadReport struct {
	URL      string         `json:"url"`
	Rate     float64        `json:"rate"`
	Duration time.Duration  `json:"duration_ns"`
	Stream   bool           `json:"stream"`
	Sent     int            `json:"sent"`
	OK       int            `json:"ok"`
	Errors   int            `json:"errors"`
	ByStatus map[string]int `json:"by_status"` // "200", "503", "error: timeout", ...
	Achieved float64        `json:"achieved_rate"`
	Elapsed  time.Duration  `json:"elapsed_ns"`
	Latency  percentiles    `json:"latency"`
	Service  percentiles    `json:"service"`
	TTFT     *percentiles   `json:"ttft,omitempty"`
	// Lag is how late requests were sent after they were due (the
	// scheduler's timer granularity and CPU contention); it is part of
	// Latency and not of Service.
	Lag     percentiles `json:"send_lag"`
	CPU     *cpuUse     `json:"target_cpu,omitempty"`
	SelfCPU cpuUse      `json:"load_cpu"`
}

type percentiles struct {
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
	Mean time.Duration `json:"mean_ns"`
}

// cpuUse is CPU time (user+system) used by a process during a run.
type cpuUse struct {
	Seconds float64 `json:"seconds"`
	// Cores is Seconds over the run's wall time (1.0 = one core busy).
	Cores float64 `json:"cores"`
	// PerRequest is CPU time per request sent, in microseconds.
	PerRequestUS float64 `json:"per_request_us"`
}

func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var c loadConfig
	fs.StringVar(&c.URL, "url", "http://127.0.0.1:8080/v1", "base URL of the OpenAI-compatible API (gateway or model server)")
	fs.Float64Var(&c.Rate, "rate", 1000, "requests per second, sent on schedule whatever the answers do")
	fs.DurationVar(&c.Duration, "duration", 20*time.Second, "how long to send")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "send at the same rate this long first and discard the results")
	fs.BoolVar(&c.Stream, "stream", false, "streaming requests (reports time to first token)")
	fs.StringVar(&c.Model, "model", "auto", "model field of the requests")
	fs.IntVar(&c.MaxTokens, "max-tokens", 0, "max_tokens of the requests (0: leave as in the prompts)")
	fs.IntVar(&c.Concurrency, "concurrency", 0, "most requests in flight, and connections (0: rate/10, at least 64)")
	fs.DurationVar(&c.Timeout, "timeout", 30*time.Second, "per-request timeout")
	prompts := fs.String("prompts", "", "JSONL file: one chat request body per line (or {\"prompt\":\"...\"}); default: built-in prompts")
	compare := fs.String("compare", "", "second base URL (e.g. the model server behind the gateway) loaded the same way after --url; prints what --url adds")
	pid := fs.Int("pid", 0, "report the CPU time this process (e.g. the gateway) used during the --url run")
	comparePID := fs.Int("compare-pid", 0, "report the CPU time this process used during the --compare run")
	jsonOut := fs.String("json", "", "also write the report(s) as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	c.Bodies, err = loadBodies(*prompts, c.Model, c.Stream, c.MaxTokens)
	if err != nil {
		return err
	}
	ctx := context.Background()
	c.PID = *pid
	rep, err := loadRun(ctx, c)
	if err != nil {
		return err
	}
	rep.print(os.Stdout)
	reports := []*loadReport{rep}
	if *compare != "" {
		c2 := c
		c2.URL, c2.PID = *compare, *comparePID
		time.Sleep(time.Second) // let the first run's connections settle
		rep2, err := loadRun(ctx, c2)
		if err != nil {
			return err
		}
		fmt.Println()
		rep2.print(os.Stdout)
		fmt.Println()
		printAdded(os.Stdout, rep, rep2)
		reports = append(reports, rep2)
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(reports, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// defaultPrompts are short, varied chat prompts.
var defaultPrompts = []string{
	"What is 2+2?",
	"Name three primary colours.",
	"Translate 'good morning' into French.",
	"Summarise the plot of Hamlet in two sentences.",
	"Write a haiku about autumn rain.",
	"What is the capital of Australia?",
	"Explain what a hash map is to a beginner.",
	"List the planets of the solar system in order.",
}

// loadBodies builds the request bodies: from a JSONL file (each line a chat
// request object, or {"prompt": "..."}) or the built-in prompts, with model,
// stream and max_tokens set.
func loadBodies(path, model string, stream bool, maxTokens int) ([][]byte, error) {
	var lines [][]byte
	if path == "" {
		for _, p := range defaultPrompts {
			b, _ := json.Marshal(map[string]any{"messages": []map[string]string{{"role": "user", "content": p}}})
			lines = append(lines, b)
		}
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
		for n := 1; sc.Scan(); n++ {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			if !gjson.ValidBytes(line) || !gjson.ParseBytes(line).IsObject() {
				return nil, fmt.Errorf("%s:%d: not a JSON object", path, n)
			}
			if p := gjson.GetBytes(line, "prompt"); p.Exists() && !gjson.GetBytes(line, "messages").Exists() {
				b, _ := json.Marshal(map[string]any{"messages": []map[string]string{{"role": "user", "content": p.String()}}})
				line = b
			} else if !gjson.GetBytes(line, "messages").IsArray() {
				return nil, fmt.Errorf("%s:%d: needs \"messages\" (an array) or \"prompt\"", path, n)
			}
			lines = append(lines, append([]byte(nil), line...))
		}
		if err := sc.Err(); err != nil {
			return nil, err
		}
		if len(lines) == 0 {
			return nil, fmt.Errorf("%s: no prompts", path)
		}
	}
	for i, b := range lines {
		var err error
		b, err = sjson.SetBytes(b, "model", model)
		if err == nil {
			b, err = sjson.SetBytes(b, "stream", stream)
		}
		if err == nil && maxTokens > 0 {
			b, err = sjson.SetBytes(b, "max_tokens", maxTokens)
		}
		if err != nil {
			return nil, err
		}
		lines[i] = b
	}
	return lines, nil
}

// result is one request's outcome.
type result struct {
	status  string // "200", "503", "error: ..."
	ok      bool
	latency time.Duration // from due time
	service time.Duration // from send
	ttft    time.Duration // from due time; streams only
	lag     time.Duration // sent minus due
}

// loadRun sends c.Rate requests a second for c.Duration (after a discarded
// warm-up) on a fixed schedule and measures the answers.
func loadRun(ctx context.Context, c loadConfig) (*loadReport, error) {
	if c.Rate <= 0 || c.Duration <= 0 {
		return nil, errors.New("--rate and --duration must be positive")
	}
	if len(c.Bodies) == 0 {
		return nil, errors.New("no request bodies")
	}
	if c.Concurrency <= 0 {
		c.Concurrency = max(64, int(c.Rate/10))
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	url := strings.TrimRight(c.URL, "/") + "/chat/completions"
	// fasthttp's client: a round trip to the simulator takes about 30% less
	// time and half the allocations of net/http's (BenchmarkUpstreamClient),
	// which matters when the generator shares two cores with the gateway
	// and the model server it measures.
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	client := &fasthttp.Client{
		MaxConnsPerHost:    c.Concurrency,
		MaxConnWaitTimeout: c.Timeout,
		ReadTimeout:        c.Timeout,
		WriteTimeout:       c.Timeout,
		StreamResponseBody: c.Stream,
		// A plain dialer: fasthttp's default one caches DNS in a
		// goroutine that never exits.
		Dial:                          func(addr string) (net.Conn, error) { return dialer.Dial("tcp", addr) },
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
	}
	defer client.CloseIdleConnections()

	if c.Warmup > 0 {
		w := c
		w.Duration, w.Warmup = c.Warmup, 0
		if _, err := schedule(ctx, w, client, url); err != nil {
			return nil, err
		}
	}
	cpu0, cpuErr := processCPU(c.PID)
	self0 := selfCPU()
	start := time.Now()
	results, err := schedule(ctx, c, client, url)
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	rep := summarise(c, results, elapsed)
	rep.SelfCPU = cpuOver(selfCPU()-self0, elapsed, rep.Sent)
	if c.PID > 0 && cpuErr == nil {
		if cpu1, err := processCPU(c.PID); err == nil {
			u := cpuOver(cpu1-cpu0, elapsed, rep.Sent)
			rep.CPU = &u
		}
	}
	return rep, nil
}

// schedule runs the open loop: request i is due at start + i/rate, whatever
// happened to the earlier ones. Due requests wait for a free worker (at most
// c.Concurrency in flight); that wait counts in their latency.
func schedule(ctx context.Context, c loadConfig, client *fasthttp.Client, url string) ([]result, error) {
	n := int(math.Round(c.Rate * c.Duration.Seconds()))
	if n <= 0 {
		return nil, errors.New("rate × duration is less than one request")
	}
	interval := float64(time.Second) / c.Rate
	due := make(chan time.Time, n)
	results := make([]result, 0, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	workers := min(c.Concurrency, n)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			local := make([]result, 0, n/workers+1)
			i := w
			for d := range due {
				local = append(local, send(client, url, c.Bodies[i%len(c.Bodies)], c.Stream, d))
				i += workers
			}
			mu.Lock()
			results = append(results, local...)
			mu.Unlock()
		}(w)
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		at := start.Add(time.Duration(float64(i) * interval))
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			break
		}
		due <- at
	}
	close(due)
	wg.Wait()
	return results, ctx.Err()
}

// send makes one request that was due at due and reads its answer to the end.
func send(client *fasthttp.Client, url string, body []byte, stream bool, due time.Time) result {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(http.MethodPost)
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(body)
	sent := time.Now()
	r := result{lag: sent.Sub(due)}
	err := client.Do(req, resp)
	if err != nil {
		r.status = "error: " + errorKind(err)
		r.latency, r.service = time.Since(due), time.Since(sent)
		return r
	}
	r.status = strconv.Itoa(resp.StatusCode())
	ok := resp.StatusCode() == http.StatusOK
	if stream && ok {
		bs := resp.BodyStream()
		if bs == nil { // read whole already
			bs = bytes.NewReader(resp.Body())
		}
		ok, r.status, r.ttft = readEvents(bs, r.status, due)
	}
	if stream {
		resp.CloseBodyStream()
	}
	r.latency, r.service = time.Since(due), time.Since(sent)
	r.ok = ok
	return r
}

// readEvents reads an SSE answer to its end. It is ok when it ends with
// [DONE] and carries no error event; ttft is when the first event arrived.
func readEvents(body io.Reader, status string, due time.Time) (ok bool, _ string, ttft time.Duration) {
	br := bufio.NewReaderSize(body, 16<<10)
	ok, done := true, false
	for {
		line, err := br.ReadSlice('\n')
		if bytes.HasPrefix(line, []byte("data:")) {
			if ttft == 0 {
				ttft = time.Since(due)
			}
			p := bytes.TrimSpace(line[5:])
			if bytes.Equal(p, []byte("[DONE]")) {
				done = true
			} else if bytes.HasPrefix(p, []byte(`{"error"`)) {
				ok, status = false, "stream error"
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err != io.EOF {
				ok, status = false, "error: "+errorKind(err)
			}
			break
		}
	}
	if ok && !done {
		ok, status = false, "stream without [DONE]"
	}
	return ok, status, ttft
}

// errorKind names a transport error briefly, so errors group in the report.
func errorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, fasthttp.ErrTimeout) || errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, fasthttp.ErrConnectionClosed):
		return "connection closed"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no free local port"
	}
	return "other"
}

func summarise(c loadConfig, results []result, elapsed time.Duration) *loadReport {
	rep := &loadReport{URL: c.URL, Rate: c.Rate, Duration: c.Duration, Stream: c.Stream,
		Sent: len(results), ByStatus: map[string]int{}, Elapsed: elapsed}
	lat := make([]time.Duration, 0, len(results))
	svc := make([]time.Duration, 0, len(results))
	var ttft []time.Duration
	lag := make([]time.Duration, 0, len(results))
	for _, r := range results {
		rep.ByStatus[r.status]++
		lag = append(lag, r.lag)
		if !r.ok {
			rep.Errors++
			continue
		}
		rep.OK++
		lat = append(lat, r.latency)
		svc = append(svc, r.service)
		if c.Stream {
			ttft = append(ttft, r.ttft)
		}
	}
	if elapsed > 0 {
		rep.Achieved = float64(rep.OK) / elapsed.Seconds()
	}
	rep.Latency = percentilesOf(lat)
	rep.Service = percentilesOf(svc)
	rep.Lag = percentilesOf(lag)
	if c.Stream {
		p := percentilesOf(ttft)
		rep.TTFT = &p
	}
	return rep
}

// percentilesOf sorts d and reads nearest-rank percentiles off it.
func percentilesOf(d []time.Duration) percentiles {
	if len(d) == 0 {
		return percentiles{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return percentiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: d[len(d)-1],
		Mean: sum / time.Duration(len(d))}
}

// processCPU is a process's user+system CPU time in seconds, from
// /proc/PID/stat (fields 14 and 15, in clock ticks).
func processCPU(pid int) (float64, error) {
	if pid <= 0 {
		return 0, errors.New("no pid")
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc stat format")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("unexpected /proc stat format")
	}
	const clkTck = 100 // USER_HZ on Linux
	return (ut + st) / clkTck, nil
}

func cpuOver(sec float64, wall time.Duration, requests int) cpuUse {
	u := cpuUse{Seconds: sec}
	if wall > 0 {
		u.Cores = sec / wall.Seconds()
	}
	if requests > 0 {
		u.PerRequestUS = sec / float64(requests) * 1e6
	}
	return u
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 3, 64) }

func (r *loadReport) print(w io.Writer) {
	kind := "non-streaming"
	if r.Stream {
		kind = "streaming"
	}
	fmt.Fprintf(w, "%s  %s, %.0f req/s for %s\n", r.URL, kind, r.Rate, r.Duration)
	fmt.Fprintf(w, "  sent %d  ok %d  errors %d  achieved %.1f req/s\n", r.Sent, r.OK, r.Errors, r.Achieved)
	keys := make([]string, 0, len(r.ByStatus))
	for k := range r.ByStatus {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprint(w, "  by status:")
	for _, k := range keys {
		fmt.Fprintf(w, "  %s: %d", k, r.ByStatus[k])
	}
	fmt.Fprintln(w)
	row := func(name string, p percentiles) {
		fmt.Fprintf(w, "  %-8s p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  mean %s  (ms)\n",
			name, ms(p.P50), ms(p.P90), ms(p.P99), ms(p.P999), ms(p.Max), ms(p.Mean))
	}
	row("latency", r.Latency)
	row("service", r.Service)
	if r.TTFT != nil {
		row("ttft", *r.TTFT)
	}
	row("send lag", r.Lag)
	if r.CPU != nil {
		fmt.Fprintf(w, "  target CPU %.2f s (%.2f cores, %.1f µs/request)\n", r.CPU.Seconds, r.CPU.Cores, r.CPU.PerRequestUS)
	}
	fmt.Fprintf(w, "  load generator CPU %.2f s (%.2f cores)\n", r.SelfCPU.Seconds, r.SelfCPU.Cores)
}

// printAdded prints what a (e.g. the gateway) adds over b (the model server
// it fronts): the difference of their latency percentiles.
func printAdded(w io.Writer, a, b *loadReport) {
	d := func(x, y time.Duration) string { return ms(x - y) }
	fmt.Fprintf(w, "added by %s over %s (ms):\n", a.URL, b.URL)
	fmt.Fprintf(w, "  latency p50 %s  p90 %s  p99 %s  p99.9 %s\n",
		d(a.Latency.P50, b.Latency.P50), d(a.Latency.P90, b.Latency.P90), d(a.Latency.P99, b.Latency.P99), d(a.Latency.P999, b.Latency.P999))
	fmt.Fprintf(w, "  service p50 %s  p90 %s  p99 %s  p99.9 %s\n",
		d(a.Service.P50, b.Service.P50), d(a.Service.P90, b.Service.P90), d(a.Service.P99, b.Service.P99), d(a.Service.P999, b.Service.P999))
	if a.TTFT != nil && b.TTFT != nil {
		fmt.Fprintf(w, "  ttft    p50 %s  p99 %s\n", d(a.TTFT.P50, b.TTFT.P50), d(a.TTFT.P99, b.TTFT.P99))
	}
}
