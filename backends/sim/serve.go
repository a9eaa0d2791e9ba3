package sim

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// outPool recycles reply buffers; buffers grown past 64 KiB (answers with
// long logprobs) are left to the garbage collector.
var outPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() *[]byte { return outPool.Get().(*[]byte) }

func putBuf(bp *[]byte, b []byte) {
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		outPool.Put(bp)
	}
}

// draw returns a number in [0, 1) for the k-th fault draw of request seq.
func (s *Server) draw(seq uint64, k uint64) float64 {
	return float64(mix(uint64(s.cfg.Seed)^seq*0x9e3779b97f4a7c15^k*0xd1b54a32d192ed03)>>11) / (1 << 53)
}

// gen is one request in generation.
type gen struct {
	ctx          context.Context
	timer        *time.Timer
	arrival      time.Time
	seq          uint64
	created      int64
	promptTokens int
	logprobs     bool
	top          int // alternatives asked for
	includeUsage bool
	n            int // choices
	choices      [maxChoices]plan
}

// longest returns the length of the longest choice, total the sum.
func (g *gen) lengths() (longest, total int) {
	for k := range g.n {
		t := g.choices[k].tokens
		longest = max(longest, t)
		total += t
	}
	return longest, total
}

// wait pauses for d and reports whether the request is still wanted: false
// when the client went away or the server is closing. It never sleeps past
// either.
func (s *Server) wait(g *gen, d time.Duration) bool {
	if d <= 0 {
		select {
		case <-g.ctx.Done():
			return false
		case <-s.quit:
			return false
		default:
			return true
		}
	}
	if g.timer == nil {
		g.timer = time.NewTimer(d)
	} else {
		g.timer.Reset(d)
	}
	select {
	case <-g.timer.C:
		return true
	case <-g.ctx.Done():
		g.timer.Stop()
		return false
	case <-s.quit:
		g.timer.Stop()
		return false
	}
}

// outcome is how a request ended; end counts it.
type outcome int

const (
	completed outcome = iota
	// cancelled: the client went away, or the server is closing.
	cancelled
	// failed: an error or invalid answer was sent.
	failed
	// cut: the stream is to end abruptly (CloseAfter).
	cut
)

// end counts the request's outcome in Stats. It cuts the connection of a
// cut stream, and of a request abandoned because the server is closing.
func (s *Server) end(ctx context.Context, o outcome, arrival time.Time) {
	switch o {
	case completed:
		s.completed.Add(1)
		s.e2e.observe(time.Since(arrival))
	case cancelled:
		s.cancelled.Add(1)
		if ctx.Err() == nil {
			panic(http.ErrAbortHandler)
		}
	case failed:
		s.errors.Add(1)
	case cut:
		s.errors.Add(1)
		panic(http.ErrAbortHandler) // no finish, no [DONE]
	}
}

func (s *Server) serveCompletion(w http.ResponseWriter, r *http.Request, chat bool) {
	arrival := time.Now()
	s.requests.Add(1)
	ctx := r.Context()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "", "method "+r.Method+" not allowed here: use POST")
		s.end(ctx, failed, arrival)
		return
	}
	var req request
	if bad := decode(r, &req, chat); bad != nil {
		writeError(w, bad.status, bad.param, bad.msg)
		s.end(ctx, failed, arrival)
		return
	}
	seq := s.seq.Add(1)
	f := s.faults.Load()
	if f.ErrorRate > 0 && s.draw(seq, 1) < f.ErrorRate {
		if f.RetryAfter > 0 {
			w.Header()["Retry-After"] = []string{strconv.FormatInt(int64((f.RetryAfter+time.Second-1)/time.Second), 10)}
		}
		writeError(w, f.ErrorStatus, "", "simulated upstream failure (sim error-rate "+strconv.FormatFloat(f.ErrorRate, 'g', -1, 64)+")")
		s.end(ctx, failed, arrival)
		return
	}
	switch f.Invalid {
	case InvalidHTML:
		w.Header()["Content-Type"] = htmlContentType
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, htmlPage)
		s.end(ctx, failed, arrival)
		return
	case InvalidNoChoices:
		w.Header()["Content-Type"] = jsonContentType
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, noChoicesBody)
		s.end(ctx, failed, arrival)
		return
	}
	if s.slots != nil {
		select {
		case s.slots <- struct{}{}:
		default:
			s.waiting.Add(1)
			select {
			case s.slots <- struct{}{}:
				s.waiting.Add(-1)
			case <-ctx.Done():
				s.waiting.Add(-1)
				s.end(ctx, cancelled, arrival)
				return
			case <-s.quit:
				s.waiting.Add(-1)
				s.end(ctx, cancelled, arrival)
				return
			}
		}
		defer func() { <-s.slots }()
	}
	g := gen{
		ctx:          ctx,
		arrival:      arrival,
		seq:          seq,
		created:      arrival.Unix(),
		includeUsage: req.StreamOptions.IncludeUsage,
	}
	s.plan(&req, chat, &g)
	if req.Logprobs.set {
		g.logprobs = true
		switch {
		case !chat:
			g.top = max(req.Logprobs.n, 1) // vLLM always lists the sampled token
		case req.TopLogprobs != nil:
			g.top = *req.TopLogprobs
		}
	}
	s.running.Add(1)
	defer s.running.Add(-1)
	s.promptTokens.Add(int64(g.promptTokens))
	kv := int64(g.promptTokens)
	s.kvInUse.Add(kv)
	defer func() { s.kvInUse.Add(-kv) }()

	if f.HangRate > 0 && s.draw(seq, 2) < f.HangRate {
		select {
		case <-ctx.Done():
		case <-s.quit:
		}
		s.end(ctx, cancelled, arrival)
		return
	}
	var o outcome
	if req.Stream || f.Invalid == InvalidSSE {
		o = s.stream(w, &g, f, &kv)
		if o == completed && !req.Stream {
			o = failed
		}
	} else {
		o = s.respond(w, &g, f, &kv)
	}
	s.end(ctx, o, arrival)
}

// htmlPage is the body of InvalidHTML answers.
const htmlPage = "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n<body><h1>Welcome to nginx!</h1><p>If you see this page, the web server is working.</p></body></html>\n"

// noChoicesBody is the body of InvalidNoChoices answers: vLLM's legacy
// error object, which some servers send with a 200.
const noChoicesBody = `{"object":"error","message":"simulated: a 200 whose body is not a completion","type":"InternalServerError","param":null,"code":500}`

// respond produces a non-streaming answer.
func (s *Server) respond(w http.ResponseWriter, g *gen, f *Faults, kv *int64) outcome {
	if !s.wait(g, s.cfg.TTFT+s.cfg.SlowStart) {
		return cancelled
	}
	s.ttft.observe(time.Since(g.arrival))
	longest, total := g.lengths()
	s.kvInUse.Add(int64(total))
	*kv += int64(total)
	if !s.wait(g, time.Duration(longest-1)*s.cfg.ITL) {
		return cancelled
	}
	s.generationTokens.Add(int64(total))
	bp := getBuf()
	defer func() { putBuf(bp, *bp) }()
	b := s.appendHead((*bp)[:0], g, false)
	b = append(b, '[')
	for k := range g.n {
		p := &g.choices[k]
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"index":`...)
		b = appendInt(b, k)
		if p.chat {
			b = append(b, `,"message":{"role":"assistant","content":"`...)
		} else {
			b = append(b, `,"text":"`...)
		}
		for i := 0; i < p.tokens; i++ {
			b = append(b, p.token(i)...)
		}
		if p.chat {
			b = append(b, `"}`...)
		} else {
			b = append(b, '"')
		}
		b = append(b, `,"logprobs":`...)
		if g.logprobs {
			b = g.appendLogprobs(b, p, 0, p.tokens, 0)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, `,"finish_reason":"`...)
		b = append(b, p.finish...)
		b = append(b, `"}`...)
	}
	b = append(b, `],"usage":`...)
	b = g.appendUsage(b, total)
	b = append(b, '}')
	*bp = b

	o := completed
	if f.Invalid == InvalidTruncated {
		b, o = b[:len(b)/2], failed
	}
	h := w.Header()
	h["Content-Type"] = jsonContentType
	if len(b) >= 2048 || f.Stall > 0 { // below that net/http sets Content-Length itself
		h["Content-Length"] = []string{strconv.Itoa(len(b))}
	}
	w.WriteHeader(http.StatusOK)
	if f.Stall > 0 {
		half := len(b) / 2
		if _, err := w.Write(b[:half]); err != nil || http.NewResponseController(w).Flush() != nil {
			return cancelled
		}
		if !s.wait(g, f.Stall) {
			return cancelled
		}
		b = b[half:]
	}
	if _, err := w.Write(b); err != nil {
		return cancelled
	}
	return o
}

// stream produces an SSE answer, one event per token and choice; the
// choices advance together, as a batch would. Headers go out with the
// first token, so a slow start looks like a slow first byte. Events are
// flushed whenever the next ones are not due at once (and at the end): with
// ITL > 0 that is after every step, while with no latency a whole answer
// costs one write instead of one per token.
func (s *Server) stream(w http.ResponseWriter, g *gen, f *Faults, kv *int64) outcome {
	rc := http.NewResponseController(w)
	h := w.Header()
	h["Content-Type"] = sseContentType
	h["Cache-Control"] = noCache
	bp := getBuf()
	b := (*bp)[:0] // events not yet written
	defer func() { putBuf(bp, b) }()
	var head [192]byte
	prefix := s.appendHead(head[:0], g, true)
	var offsets [maxChoices]int // of each choice's next token in its text, for completions logprobs
	longest, total := g.lengths()
	stop := longest // the step after which the stream is cut
	if f.CloseAfter > 0 {
		stop = min(f.CloseAfter, longest)
	}

	flush := func() bool {
		if len(b) == 0 {
			return true
		}
		_, err := w.Write(b)
		b = b[:0]
		return err == nil && rc.Flush() == nil
	}

	for i := 0; i < longest; i++ {
		d := s.cfg.ITL
		if i == 0 {
			d = s.cfg.TTFT + s.cfg.SlowStart
		}
		if d > 0 && !flush() {
			return cancelled
		}
		if !s.wait(g, d) {
			return cancelled
		}
		if i == 0 {
			w.WriteHeader(http.StatusOK)
			s.ttft.observe(time.Since(g.arrival))
		}
		for k := range g.n {
			p := &g.choices[k]
			if i >= p.tokens {
				continue
			}
			start := len(b)
			b = g.appendTokenEvent(b, prefix, p, k, i, offsets[k])
			if i == 0 && k == 0 && f.Invalid == InvalidTruncated {
				// A whole event whose JSON stops halfway.
				b = append(b[:start+(len(b)-start)/2], "\n\n"...)
			}
			offsets[k] += len(p.token(i))
			s.generationTokens.Add(1)
			s.kvInUse.Add(1)
			*kv++
		}
		if f.CloseAfter > 0 && i+1 == stop {
			if f.CutMidEvent {
				// Half of what would have come next.
				start := len(b)
				if p := &g.choices[0]; i+1 < p.tokens {
					b = g.appendTokenEvent(b, prefix, p, 0, i+1, offsets[0])
				} else {
					b = appendFinishEvent(b, prefix, p, 0)
				}
				b = b[:start+(len(b)-start)/2]
			}
			flush()
			return cut
		}
		for k := range g.n {
			if p := &g.choices[k]; i+1 == p.tokens {
				b = appendFinishEvent(b, prefix, p, k)
			}
		}
		if len(b) >= 16<<10 && !flush() {
			return cancelled
		}
	}
	if g.includeUsage {
		b = append(b, "data: "...)
		b = append(b, prefix...)
		b = append(b, `[],"usage":`...)
		b = g.appendUsage(b, total)
		b = append(b, "}\n\n"...)
	}
	b = append(b, "data: [DONE]\n\n"...)
	if !flush() {
		return cancelled
	}
	return completed
}

// appendFinishEvent appends the SSE event that ends choice k.
func appendFinishEvent(b, prefix []byte, p *plan, k int) []byte {
	b = append(b, "data: "...)
	b = append(b, prefix...)
	b = append(b, `[{"index":`...)
	b = appendInt(b, k)
	if p.chat {
		b = append(b, `,"delta":{},"logprobs":null,"finish_reason":"`...)
	} else {
		b = append(b, `,"text":"","logprobs":null,"finish_reason":"`...)
	}
	b = append(b, p.finish...)
	return append(b, `"}]}`+"\n\n"...)
}

// appendTokenEvent appends the SSE event carrying token i of choice k.
func (g *gen) appendTokenEvent(b, prefix []byte, p *plan, k, i, offset int) []byte {
	tok := p.token(i)
	b = append(b, "data: "...)
	b = append(b, prefix...)
	b = append(b, `[{"index":`...)
	b = appendInt(b, k)
	if p.chat {
		if i == 0 {
			b = append(b, `,"delta":{"role":"assistant","content":"`...)
		} else {
			b = append(b, `,"delta":{"content":"`...)
		}
		b = append(b, tok...)
		b = append(b, `"},"logprobs":`...)
	} else {
		b = append(b, `,"text":"`...)
		b = append(b, tok...)
		b = append(b, `","logprobs":`...)
	}
	if g.logprobs {
		b = g.appendLogprobs(b, p, i, i+1, offset)
	} else {
		b = append(b, "null"...)
	}
	return append(b, `,"finish_reason":null}]}`+"\n\n"...)
}

// appendHead appends the reply's fields up to and including `"choices":`.
func (s *Server) appendHead(b []byte, g *gen, chunk bool) []byte {
	chat := g.choices[0].chat
	if chat {
		b = append(b, `{"id":"chatcmpl-sim-`...)
	} else {
		b = append(b, `{"id":"cmpl-sim-`...)
	}
	b = strconv.AppendUint(b, g.seq, 10)
	switch {
	case chat && chunk:
		b = append(b, `","object":"chat.completion.chunk","created":`...)
	case chat:
		b = append(b, `","object":"chat.completion","created":`...)
	default:
		b = append(b, `","object":"text_completion","created":`...)
	}
	b = appendInt(b, g.created)
	// The reply names the served model whatever the request asked for, as
	// vLLM would after accepting it.
	b = append(b, `,"model":`...)
	b = append(b, s.modelJSON...)
	return append(b, `,"choices":`...)
}

// appendUsage appends the usage object; the prompt counts once, whatever n.
func (g *gen) appendUsage(b []byte, completion int) []byte {
	b = append(b, `{"prompt_tokens":`...)
	b = appendInt(b, g.promptTokens)
	b = append(b, `,"completion_tokens":`...)
	b = appendInt(b, completion)
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, g.promptTokens+completion)
	return append(b, '}')
}

// appendLogprobs appends the logprobs object for tokens [from, to) of
// choice p: chat's {"content":[...]} or completions' parallel arrays.
// offset is the text offset of token from (completions only).
func (g *gen) appendLogprobs(b []byte, p *plan, from, to, offset int) []byte {
	if p.chat {
		b = append(b, `{"content":[`...)
		for i := from; i < to; i++ {
			if i > from {
				b = append(b, ',')
			}
			tok := p.token(i)
			lp, lr := p.dist(i)
			b = appendChatLogprob(b, tok, lp)
			b = append(b, `,"top_logprobs":[`...)
			for j := 0; j < g.top; j++ {
				if j > 0 {
					b = append(b, ',')
				}
				alt := tok
				if j > 0 {
					alt = p.alternative(i, j)
				}
				b = appendChatLogprob(b, alt, lp+float64(j)*lr)
				b = append(b, '}')
			}
			b = append(b, "]}"...)
		}
		return append(b, "]}"...)
	}
	off := offset
	b = append(b, `{"text_offset":[`...)
	for i := from; i < to; i++ {
		if i > from {
			b = append(b, ',')
		}
		b = appendInt(b, off)
		off += len(p.token(i))
	}
	b = append(b, `],"token_logprobs":[`...)
	for i := from; i < to; i++ {
		if i > from {
			b = append(b, ',')
		}
		lp, _ := p.dist(i)
		b = appendLogprob(b, lp)
	}
	b = append(b, `],"tokens":[`...)
	for i := from; i < to; i++ {
		if i > from {
			b = append(b, ',')
		}
		b = appendString(b, p.token(i))
	}
	b = append(b, `],"top_logprobs":[`...)
	for i := from; i < to; i++ {
		if i > from {
			b = append(b, ',')
		}
		lp, lr := p.dist(i)
		b = append(b, '{')
		for j := 0; j < g.top; j++ {
			if j > 0 {
				b = append(b, ',')
			}
			if j == 0 {
				b = appendString(b, p.token(i))
			} else {
				b = appendString(b, p.alternative(i, j))
			}
			b = append(b, ':')
			b = appendLogprob(b, lp+float64(j)*lr)
		}
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// appendChatLogprob appends {"token":..,"logprob":..,"bytes":[..] without
// the closing brace.
func appendChatLogprob(b []byte, tok string, lp float64) []byte {
	b = append(b, `{"token":`...)
	b = appendString(b, tok)
	b = append(b, `,"logprob":`...)
	b = appendLogprob(b, lp)
	b = append(b, `,"bytes":`...)
	return appendByteList(b, tok)
}

func appendLogprob(b []byte, lp float64) []byte {
	return strconv.AppendFloat(b, lp, 'f', 4, 64)
}
