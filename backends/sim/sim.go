// Package sim is a simulated OpenAI-compatible model server that behaves like
// vLLM closely enough for tests, the demo and benchmarks: chat and text
// completions (plain and SSE streaming), deterministic answers per prompt,
// configurable latency, a concurrency limit with a waiting queue, fault
// injection, and Prometheus metrics under vLLM's names.
//
// The serving path is built to be cheap, because the simulator shares the
// machine with the gateway under load: replies are written by hand into
// pooled buffers and waiting is done with one reusable timer per request.
package sim

import (
	"flag"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes the simulated model and its behaviour. The zero value is
// usable: New fills the defaults documented on each field.
type Config struct {
	// Model is the served model name. If empty, "sim".
	Model string
	// TTFT is the time to first token (zero: none).
	TTFT time.Duration
	// ITL is the inter-token latency (zero: tokens come at once).
	ITL time.Duration
	// MinTokens and MaxTokens bound the output length, which is chosen
	// deterministically from a hash of the prompt text; the request's
	// max_tokens (or max_completion_tokens) caps it. If zero, 16 and 128.
	// A MaxTokens below MinTokens is raised to MinTokens.
	MinTokens, MaxTokens int

	// ErrorRate is the share (0..1) of completion requests answered at once
	// (before waiting for a slot) with ErrorStatus in OpenAI's error shape.
	ErrorRate float64
	// ErrorStatus is the status of injected errors. If zero, 500.
	ErrorStatus int
	// HangRate is the share (0..1) of completion requests that never answer
	// until the client goes away (or Close is called). A hanging request
	// holds its running slot, like a stuck generation would.
	HangRate float64
	// CloseAfter, when > 0, cuts every stream after this many tokens (or
	// after the last token if the answer is shorter): the connection is
	// closed abruptly, with no finish chunk and no [DONE].
	CloseAfter int
	// SlowStart is an extra delay before the first token, on top of TTFT.
	SlowStart time.Duration
	// Seed makes the fault draws reproducible for a given request order.
	Seed int64

	// MaxRunning is how many requests generate at once; the rest wait in
	// line (vllm:num_requests_waiting). If zero, unlimited.
	MaxRunning int
	// KVCacheTokens is the nominal KV cache capacity in tokens that
	// vllm:kv_cache_usage_perc is computed against (prompt and generated
	// tokens of running requests). If zero, 65536: roughly what one
	// mid-size GPU holds for a 7-8B model; only the ratio matters here.
	KVCacheTokens int
}

const (
	defaultModel         = "sim"
	defaultMinTokens     = 16
	defaultMaxTokens     = 128
	defaultErrorStatus   = http.StatusInternalServerError
	defaultKVCacheTokens = 1 << 16
)

// withDefaults returns c with zero fields replaced by their defaults.
func (c Config) withDefaults() Config {
	if c.Model == "" {
		c.Model = defaultModel
	}
	if c.MinTokens <= 0 {
		c.MinTokens = defaultMinTokens
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = defaultMaxTokens
	}
	if c.MaxTokens < c.MinTokens {
		c.MaxTokens = c.MinTokens
	}
	c.ErrorStatus = validStatus(c.ErrorStatus)
	if c.KVCacheTokens <= 0 {
		c.KVCacheTokens = defaultKVCacheTokens
	}
	if c.MaxRunning < 0 {
		c.MaxRunning = 0
	}
	return c
}

// validStatus maps anything that is not an error status to the default.
func validStatus(s int) int {
	if s < 400 || s > 599 {
		return defaultErrorStatus
	}
	return s
}

// RegisterFlags binds c's fields to flags on fs. Flag defaults are c's
// current values with the Config defaults filled in.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := c.withDefaults()
	fs.StringVar(&c.Model, "model", d.Model, "served model name")
	fs.DurationVar(&c.TTFT, "ttft", d.TTFT, "time to first token")
	fs.DurationVar(&c.ITL, "itl", d.ITL, "inter-token latency")
	fs.IntVar(&c.MinTokens, "min-tokens", d.MinTokens, "shortest answer in tokens")
	fs.IntVar(&c.MaxTokens, "max-tokens", d.MaxTokens, "longest answer in tokens (the request's max_tokens caps it further)")
	fs.Float64Var(&c.ErrorRate, "error-rate", d.ErrorRate, "share of requests answered with --error-status (0..1)")
	fs.IntVar(&c.ErrorStatus, "error-status", d.ErrorStatus, "HTTP status of injected errors")
	fs.Float64Var(&c.HangRate, "hang-rate", d.HangRate, "share of requests that never answer (0..1)")
	fs.IntVar(&c.CloseAfter, "close-after", d.CloseAfter, "cut streams abruptly after this many tokens (0: never)")
	fs.DurationVar(&c.SlowStart, "slow-start", d.SlowStart, "extra delay before the first token")
	fs.Int64Var(&c.Seed, "seed", d.Seed, "seed of the fault draws")
	fs.IntVar(&c.MaxRunning, "max-running", d.MaxRunning, "requests generating at once, the rest wait (0: unlimited)")
	fs.IntVar(&c.KVCacheTokens, "kv-cache-tokens", d.KVCacheTokens, "nominal KV cache capacity in tokens for vllm:kv_cache_usage_perc")
}

// faults is the part of the configuration that can change at runtime; a
// request loads one snapshot.
type faults struct {
	errorRate   float64
	errorStatus int
	hangRate    float64
	closeAfter  int
}

// Server is the simulated model server; it implements http.Handler.
type Server struct {
	cfg    Config
	faults atomic.Pointer[faults]
	// slots holds one token per running request when MaxRunning > 0.
	slots     chan struct{}
	quit      chan struct{}
	closeOnce sync.Once

	modelJSON  []byte // the model name as a JSON string, quotes included
	labels     string // model_name="..." for metrics
	modelsBody []byte // the GET /v1/models reply

	seq                                     atomic.Uint64
	requests, running, waiting              atomic.Int64
	completed, cancelled, errors            atomic.Int64
	promptTokens, generationTokens, kvInUse atomic.Int64
	ttft, e2e                               histogram
}

// New returns a server simulating the model c describes.
func New(c Config) *Server {
	c = c.withDefaults()
	s := &Server{
		cfg:  c,
		quit: make(chan struct{}),
		ttft: newHistogram(ttftBuckets),
		e2e:  newHistogram(e2eBuckets),
	}
	if c.MaxRunning > 0 {
		s.slots = make(chan struct{}, c.MaxRunning)
	}
	s.modelJSON = appendString(nil, c.Model)
	s.labels = `model_name="` + escapeLabel(c.Model) + `"`
	s.modelsBody = s.appendModels(nil, time.Now().Unix())
	s.SetFaults(c.ErrorRate, c.ErrorStatus, c.HangRate, c.CloseAfter)
	return s
}

// SetFaults changes the injected faults at runtime; requests already past
// their fault draw are not affected. It is safe for concurrent use. An
// errorStatus outside 400..599 means 500.
func (s *Server) SetFaults(errorRate float64, errorStatus int, hangRate float64, closeAfter int) {
	s.faults.Store(&faults{
		errorRate:   errorRate,
		errorStatus: validStatus(errorStatus),
		hangRate:    hangRate,
		closeAfter:  closeAfter,
	})
}

// Close ends requests that are hanging, waiting or generating by cutting
// their connections, so that an http.Server serving s can shut down; later
// completion requests are cut the same way. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.quit) })
}

// Stats are counters since New. Requests counts every completion request
// received; each one ends as exactly one of Completed, Cancelled or Errors,
// or is still Running or Waiting.
type Stats struct {
	Requests int64
	// Running is the number of requests generating (or hanging) now.
	Running int64
	// Completed counts full answers, streamed ones up to [DONE].
	Completed int64
	// Cancelled counts requests whose client went away (or that Close cut)
	// before the answer was complete.
	Cancelled int64
	// Errors counts error replies (injected, bad request) and streams cut
	// by CloseAfter.
	Errors int64
	// PromptTokens counts prompt tokens of requests that started running.
	PromptTokens int64
	// GenerationTokens counts tokens produced, including those of
	// requests cancelled midway.
	GenerationTokens int64
	// Waiting is the number of requests waiting for a slot now.
	Waiting int64
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Requests:         s.requests.Load(),
		Running:          s.running.Load(),
		Completed:        s.completed.Load(),
		Cancelled:        s.cancelled.Load(),
		Errors:           s.errors.Load(),
		PromptTokens:     s.promptTokens.Load(),
		GenerationTokens: s.generationTokens.Load(),
		Waiting:          s.waiting.Load(),
	}
}

// ServeHTTP routes the vLLM endpoints the simulator offers.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/chat/completions":
		s.serveCompletion(w, r, true)
	case "/v1/completions":
		s.serveCompletion(w, r, false)
	case "/v1/models":
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		w.Header()["Content-Type"] = jsonContentType
		w.Write(s.modelsBody)
	case "/health":
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		w.WriteHeader(http.StatusOK)
	case "/metrics":
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		s.serveMetrics(w)
	default:
		writeError(w, http.StatusNotFound, "no route "+r.URL.Path+": the simulator serves POST /v1/chat/completions, POST /v1/completions, GET /v1/models, /health and /metrics")
	}
}

// allowMethod answers 405 unless r uses method (HEAD is allowed with GET).
func allowMethod(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return true
	}
	w.Header().Set("Allow", method)
	writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed here: use "+method)
	return false
}

func (s *Server) appendModels(b []byte, created int64) []byte {
	b = append(b, `{"object":"list","data":[{"id":`...)
	b = append(b, s.modelJSON...)
	b = append(b, `,"object":"model","created":`...)
	b = appendInt(b, created)
	b = append(b, `,"owned_by":"vllm","root":`...)
	b = append(b, s.modelJSON...)
	b = append(b, `,"parent":null}]}`...)
	return b
}
