// Package sim is a simulated OpenAI-compatible model server that behaves like
// vLLM closely enough for tests, the demo and benchmarks: chat and text
// completions (plain and SSE streaming, n choices, logprobs), deterministic
// answers per prompt, a difficulty knob that makes some answers come out
// with low confidence, configurable latency, a concurrency limit with a
// waiting queue, fault injection (errors, hangs, stalls, cut streams,
// invalid bodies), and Prometheus metrics under vLLM's names.
//
// # Difficulty
//
// Every prompt has a difficulty drawn from a hash of its text. Prompts whose
// difficulty falls in the hardest HardShare are answered with low
// confidence: the text starts with a hedge ("I'm not sure, but I think …")
// and the logprobs are those of a model that is guessing (first token and
// most tokens at probability 0.15–0.5, alternatives nearly as likely).
// Other answers are confident (top-1 probability mostly 0.9–0.999, the
// second choice far behind). A prompt containing "[[hard]]" is always
// answered with low confidence and one containing "[[easy]]" never is
// ("[[hard]]" wins if both appear), whatever the server's HardShare.
//
// The serving path is built to be cheap, because the simulator shares the
// machine with the gateway under load: replies are written by hand into
// pooled buffers and waiting is done with one reusable timer per request.
package sim

import (
	"errors"
	"flag"
	"net/http"
	"strconv"
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
	// HardShare is the share (0..1) of prompts, chosen by a hash of the
	// prompt, answered with low confidence (see the package doc). Zero: only
	// prompts marked "[[hard]]". The hash does not depend on the model, so a
	// large model with a smaller HardShare finds a subset of what a small
	// one finds hard.
	HardShare float64

	// ErrorRate is the share (0..1) of completion requests answered at once
	// (before waiting for a slot) with ErrorStatus in OpenAI's error shape.
	ErrorRate float64
	// ErrorStatus is the status of injected errors. If zero, 500.
	ErrorStatus int
	// RetryAfter, when > 0, is sent with injected errors as a Retry-After
	// header in whole seconds, rounded up (what a 429 or 503 carries).
	RetryAfter time.Duration
	// HangRate is the share (0..1) of completion requests that never answer
	// (no headers) until the client goes away (or Close is called). A
	// hanging request holds its running slot, like a stuck generation would.
	HangRate float64
	// CloseAfter, when > 0, cuts every stream after this many tokens (or
	// after the last token if the answer is shorter): the connection is
	// closed abruptly, with no finish chunk and no [DONE].
	CloseAfter int
	// CutMidEvent makes a CloseAfter cut fall inside the next event: the
	// stream ends with the first half of a `data: {...` line, without its
	// end or the blank line.
	CutMidEvent bool
	// Invalid, when set, makes every answer a 200 whose body is not what
	// the client asked for (see InvalidBody's values).
	Invalid InvalidBody
	// Stall, when > 0, makes every non-streaming answer send its headers
	// and the first half of its body, then wait Stall before the rest.
	Stall time.Duration
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

// InvalidBody is a way for a 200 answer to be broken.
type InvalidBody int

const (
	// ValidBody is the zero value: answers are what was asked for.
	ValidBody InvalidBody = iota
	// InvalidHTML answers every request at once with 200 and an HTML page
	// (text/html), like a misrouted ingress would.
	InvalidHTML
	// InvalidTruncated cuts a non-streaming answer's JSON in half (with a
	// matching Content-Length, so only the JSON is broken); in a stream the
	// first event carries half of its JSON, then the stream goes on.
	InvalidTruncated
	// InvalidSSE answers non-streaming requests with an SSE stream
	// (text/event-stream); streaming requests are unaffected.
	InvalidSSE
	// InvalidNoChoices answers every request at once with 200 and a JSON
	// error object that has no "choices" (the legacy vLLM error shape).
	InvalidNoChoices
)

var invalidNames = [...]string{"", "html", "truncated", "sse", "no-choices"}

// String returns the name used by flags and /sim/faults ("" for ValidBody).
func (v InvalidBody) String() string {
	if v < 0 || int(v) >= len(invalidNames) {
		return "invalid(" + strconv.Itoa(int(v)) + ")"
	}
	return invalidNames[v]
}

// MarshalText implements encoding.TextMarshaler.
func (v InvalidBody) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText accepts "", "none", "html", "truncated", "sse" and "no-choices".
func (v *InvalidBody) UnmarshalText(b []byte) error {
	if string(b) == "none" {
		*v = ValidBody
		return nil
	}
	for i, n := range invalidNames {
		if string(b) == n {
			*v = InvalidBody(i)
			return nil
		}
	}
	return errors.New(`unknown invalid body "` + string(b) + `": use none, html, truncated, sse or no-choices`)
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
	fs.Float64Var(&c.HardShare, "hard-share", d.HardShare, `share of prompts (by a hash of the prompt) answered with low confidence (0..1); "[[hard]]"/"[[easy]]" in a prompt force it`)
	c.faultFields().register(fs, d.faults())
	fs.DurationVar(&c.SlowStart, "slow-start", d.SlowStart, "extra delay before the first token")
	fs.Int64Var(&c.Seed, "seed", d.Seed, "seed of the fault draws")
	fs.IntVar(&c.MaxRunning, "max-running", d.MaxRunning, "requests generating at once, the rest wait (0: unlimited)")
	fs.IntVar(&c.KVCacheTokens, "kv-cache-tokens", d.KVCacheTokens, "nominal KV cache capacity in tokens for vllm:kv_cache_usage_perc")
}

// Faults are the misbehaviours that can change at runtime (SetFaults,
// ApplyFaults, POST /sim/faults); Config's fields of the same names set
// the initial ones and document each. The zero value injects nothing.
type Faults struct {
	ErrorRate   float64
	ErrorStatus int // outside 400..599 (zero included): 500
	RetryAfter  time.Duration
	HangRate    float64
	CloseAfter  int
	CutMidEvent bool
	Invalid     InvalidBody
	Stall       time.Duration
}

func (c *Config) faults() Faults {
	return Faults{
		ErrorRate: c.ErrorRate, ErrorStatus: c.ErrorStatus, RetryAfter: c.RetryAfter,
		HangRate: c.HangRate, CloseAfter: c.CloseAfter, CutMidEvent: c.CutMidEvent,
		Invalid: c.Invalid, Stall: c.Stall,
	}
}

// faultFields points at the fields of a Config or of a Faults, so both are
// bound to the same flags.
type faultFields struct {
	errorRate, hangRate   *float64
	errorStatus, closeAft *int
	retryAfter, stall     *time.Duration
	cutMidEvent           *bool
	invalid               *InvalidBody
}

func (c *Config) faultFields() faultFields {
	return faultFields{&c.ErrorRate, &c.HangRate, &c.ErrorStatus, &c.CloseAfter, &c.RetryAfter, &c.Stall, &c.CutMidEvent, &c.Invalid}
}

func (f *Faults) fields() faultFields {
	return faultFields{&f.ErrorRate, &f.HangRate, &f.ErrorStatus, &f.CloseAfter, &f.RetryAfter, &f.Stall, &f.CutMidEvent, &f.Invalid}
}

// register binds the fault flags, with defaults d.
func (p faultFields) register(fs *flag.FlagSet, d Faults) {
	fs.Float64Var(p.errorRate, "error-rate", d.ErrorRate, "share of requests answered with --error-status (0..1)")
	fs.IntVar(p.errorStatus, "error-status", d.ErrorStatus, "HTTP status of injected errors")
	fs.DurationVar(p.retryAfter, "retry-after", d.RetryAfter, "Retry-After sent with injected errors, in whole seconds rounded up (0: none)")
	fs.Float64Var(p.hangRate, "hang-rate", d.HangRate, "share of requests that never answer, not even headers (0..1)")
	fs.IntVar(p.closeAft, "close-after", d.CloseAfter, "cut streams abruptly after this many tokens (0: never)")
	fs.BoolVar(p.cutMidEvent, "cut-mid-event", d.CutMidEvent, "a --close-after cut ends inside an event (half a data: line)")
	fs.TextVar(p.invalid, "invalid-body", d.Invalid, "answer 200 with a broken body: html, truncated, sse or no-choices (none: off)")
	fs.DurationVar(p.stall, "stall", d.Stall, "non-streaming answers send headers and half the body, then stall this long (0: never)")
}

// Server is the simulated model server; it implements http.Handler.
type Server struct {
	cfg    Config
	faults atomic.Pointer[Faults]
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
	s.ApplyFaults(c.faults())
	return s
}

// SetFaults replaces the injected faults with these four (the others
// cleared); it is ApplyFaults(Faults{ErrorRate: errorRate, ...}).
func (s *Server) SetFaults(errorRate float64, errorStatus int, hangRate float64, closeAfter int) {
	s.ApplyFaults(Faults{ErrorRate: errorRate, ErrorStatus: errorStatus, HangRate: hangRate, CloseAfter: closeAfter})
}

// ApplyFaults replaces the injected faults at runtime; requests already
// past their fault draw are not affected. It is safe for concurrent use.
func (s *Server) ApplyFaults(f Faults) {
	f.ErrorStatus = validStatus(f.ErrorStatus)
	s.faults.Store(&f)
}

// Faults returns the faults in force.
func (s *Server) Faults() Faults { return *s.faults.Load() }

// Close ends requests that are hanging, waiting or generating by cutting
// their connections, so that an http.Server serving s can shut down; later
// completion requests are cut the same way. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.quit) })
}

// Stats are counters since New (GET /sim/stats serves them as JSON).
// Requests counts every completion request received; each one ends as
// exactly one of Completed, Cancelled or Errors, or is still Running or
// Waiting.
type Stats struct {
	Requests int64 `json:"requests"`
	// Running is the number of requests generating (or hanging) now.
	Running int64 `json:"running"`
	// Completed counts full answers, streamed ones up to [DONE].
	Completed int64 `json:"completed"`
	// Cancelled counts requests whose client went away (or that Close cut)
	// before the answer was complete: a cascade that drops a small
	// model's stream shows here.
	Cancelled int64 `json:"cancelled"`
	// Errors counts error replies (injected, bad request), invalid bodies
	// (Invalid) and streams cut by CloseAfter.
	Errors int64 `json:"errors"`
	// PromptTokens counts prompt tokens of requests that started running.
	PromptTokens int64 `json:"prompt_tokens"`
	// GenerationTokens counts tokens produced, including those of
	// requests cancelled midway.
	GenerationTokens int64 `json:"generation_tokens"`
	// Waiting is the number of requests waiting for a slot now.
	Waiting int64 `json:"waiting"`
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
	case "/sim/faults":
		s.serveFaults(w, r)
	case "/sim/stats":
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		writeJSON(w, s.Stats())
	default:
		writeError(w, http.StatusNotFound, "", "no route "+r.URL.Path+": the simulator serves POST /v1/chat/completions, POST /v1/completions, GET /v1/models, /health, /metrics, /sim/faults and GET /sim/stats")
	}
}

// allowMethod answers 405 unless r uses method (HEAD is allowed with GET).
func allowMethod(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return true
	}
	w.Header().Set("Allow", method)
	writeError(w, http.StatusMethodNotAllowed, "", "method "+r.Method+" not allowed here: use "+method)
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
