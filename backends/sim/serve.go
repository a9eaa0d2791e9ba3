package sim

import (
	"context"
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
	plan
	ctx          context.Context
	timer        *time.Timer
	arrival      time.Time
	seq          uint64
	created      int64
	logprobs     bool
	top          int // alternatives asked for
	includeUsage bool
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

// abandon records a request that ended before its answer was complete. If
// the client is still there the server is closing: the connection is cut.
func (s *Server) abandon(ctx context.Context) {
	s.cancelled.Add(1)
	if ctx.Err() == nil {
		panic(http.ErrAbortHandler)
	}
}

func (s *Server) serveCompletion(w http.ResponseWriter, r *http.Request, chat bool) {
	arrival := time.Now()
	s.requests.Add(1)
	if r.Method != http.MethodPost {
		s.errors.Add(1)
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed here: use POST")
		return
	}
	var req request
	if status, msg := decode(r, &req, chat); status != 0 {
		s.errors.Add(1)
		writeError(w, status, msg)
		return
	}
	seq := s.seq.Add(1)
	f := s.faults.Load()
	if f.errorRate > 0 && s.draw(seq, 1) < f.errorRate {
		s.errors.Add(1)
		writeError(w, f.errorStatus, "simulated upstream failure (sim error-rate "+strconv.FormatFloat(f.errorRate, 'g', -1, 64)+")")
		return
	}
	ctx := r.Context()
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
				s.abandon(ctx)
				return
			case <-s.quit:
				s.waiting.Add(-1)
				s.abandon(ctx)
				return
			}
		}
		defer func() { <-s.slots }()
	}
	g := gen{
		plan:         s.makePlan(&req, chat),
		ctx:          ctx,
		arrival:      arrival,
		seq:          seq,
		created:      arrival.Unix(),
		includeUsage: req.StreamOptions.IncludeUsage,
	}
	if req.Logprobs.set {
		g.logprobs = true
		g.top = req.Logprobs.n
		if chat {
			g.top = req.TopLogprobs
		} else if g.top < 1 {
			g.top = 1
		}
	}
	s.running.Add(1)
	defer s.running.Add(-1)
	s.promptTokens.Add(int64(g.promptTokens))
	kv := int64(g.promptTokens)
	s.kvInUse.Add(kv)
	defer func() { s.kvInUse.Add(-kv) }()

	if f.hangRate > 0 && s.draw(seq, 2) < f.hangRate {
		select {
		case <-ctx.Done():
		case <-s.quit:
		}
		s.abandon(ctx)
		return
	}
	if req.Stream {
		s.stream(w, &g, f.closeAfter, &kv)
	} else {
		s.respond(w, &g, &kv)
	}
}

// respond produces a non-streaming answer.
func (s *Server) respond(w http.ResponseWriter, g *gen, kv *int64) {
	if !s.wait(g, s.cfg.TTFT+s.cfg.SlowStart) {
		s.abandon(g.ctx)
		return
	}
	s.ttft.observe(time.Since(g.arrival))
	s.kvInUse.Add(int64(g.tokens))
	*kv += int64(g.tokens)
	if !s.wait(g, time.Duration(g.tokens-1)*s.cfg.ITL) {
		s.abandon(g.ctx)
		return
	}
	bp := getBuf()
	b := s.appendHead((*bp)[:0], g, false)
	b = append(b, `[{"index":0,`...)
	if g.chat {
		b = append(b, `"message":{"role":"assistant","content":"`...)
	} else {
		b = append(b, `"text":"`...)
	}
	for i := 0; i < g.tokens; i++ {
		b = append(b, g.token(i)...)
	}
	if g.chat {
		b = append(b, `"}`...)
	} else {
		b = append(b, '"')
	}
	b = append(b, `,"logprobs":`...)
	if g.logprobs {
		b = g.appendLogprobs(b, 0, g.tokens, 0)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"finish_reason":"`...)
	b = append(b, g.finish...)
	b = append(b, `"}],"usage":`...)
	b = g.appendUsage(b)
	b = append(b, '}')

	h := w.Header()
	h["Content-Type"] = jsonContentType
	if len(b) >= 2048 { // below that net/http sets Content-Length itself
		h["Content-Length"] = []string{strconv.Itoa(len(b))}
	}
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(b)
	putBuf(bp, b)
	s.generationTokens.Add(int64(g.tokens))
	if err != nil {
		s.cancelled.Add(1)
		return
	}
	s.completed.Add(1)
	s.e2e.observe(time.Since(g.arrival))
}

// stream produces an SSE answer, one event per token. Headers go out with
// the first token, so a slow start looks like a slow first byte. Events are
// flushed whenever the next one is not due at once (and at the end): with
// ITL > 0 that is after every token, while with no latency a whole answer
// costs one write instead of one per token.
func (s *Server) stream(w http.ResponseWriter, g *gen, closeAfter int, kv *int64) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h["Content-Type"] = sseContentType
	h["Cache-Control"] = noCache
	bp := getBuf()
	b := (*bp)[:0] // events not yet written
	defer func() { putBuf(bp, b) }()
	var head [192]byte
	prefix := s.appendHead(head[:0], g, true)
	offset := 0 // of the token in the text, for completions logprobs

	flush := func() bool {
		if len(b) == 0 {
			return true
		}
		_, err := w.Write(b)
		b = b[:0]
		return err == nil && rc.Flush() == nil
	}

	for i := 0; i < g.tokens; i++ {
		d := s.cfg.ITL
		if i == 0 {
			d = s.cfg.TTFT + s.cfg.SlowStart
		}
		if d > 0 && !flush() {
			s.cancelled.Add(1)
			return
		}
		if !s.wait(g, d) {
			s.abandon(g.ctx)
			return
		}
		if i == 0 {
			w.WriteHeader(http.StatusOK)
			s.ttft.observe(time.Since(g.arrival))
		}
		b = g.appendTokenEvent(b, prefix, i, offset)
		offset += len(g.token(i))
		s.generationTokens.Add(1)
		s.kvInUse.Add(1)
		*kv++
		if closeAfter > 0 && (i+1 == closeAfter || i+1 == g.tokens) {
			flush()
			s.errors.Add(1)
			panic(http.ErrAbortHandler) // cut the connection: no finish, no [DONE]
		}
		if len(b) >= 16<<10 && !flush() {
			s.cancelled.Add(1)
			return
		}
	}

	b = append(b, "data: "...)
	b = append(b, prefix...)
	if g.chat {
		b = append(b, `[{"index":0,"delta":{},"logprobs":null,"finish_reason":"`...)
	} else {
		b = append(b, `[{"index":0,"text":"","logprobs":null,"finish_reason":"`...)
	}
	b = append(b, g.finish...)
	b = append(b, `"}]}`+"\n\n"...)
	if g.includeUsage {
		b = append(b, "data: "...)
		b = append(b, prefix...)
		b = append(b, `[],"usage":`...)
		b = g.appendUsage(b)
		b = append(b, "}\n\n"...)
	}
	b = append(b, "data: [DONE]\n\n"...)
	if !flush() {
		s.cancelled.Add(1)
		return
	}
	s.completed.Add(1)
	s.e2e.observe(time.Since(g.arrival))
}

// appendTokenEvent appends the SSE event carrying token i.
func (g *gen) appendTokenEvent(b, prefix []byte, i, offset int) []byte {
	tok := g.token(i)
	b = append(b, "data: "...)
	b = append(b, prefix...)
	b = append(b, `[{"index":0,`...)
	if g.chat {
		if i == 0 {
			b = append(b, `"delta":{"role":"assistant","content":"`...)
		} else {
			b = append(b, `"delta":{"content":"`...)
		}
		b = append(b, tok...)
		b = append(b, `"},"logprobs":`...)
	} else {
		b = append(b, `"text":"`...)
		b = append(b, tok...)
		b = append(b, `","logprobs":`...)
	}
	if g.logprobs {
		b = g.appendLogprobs(b, i, i+1, offset)
	} else {
		b = append(b, "null"...)
	}
	return append(b, `,"finish_reason":null}]}`+"\n\n"...)
}

// appendHead appends the reply's fields up to and including `"choices":`.
func (s *Server) appendHead(b []byte, g *gen, chunk bool) []byte {
	if g.chat {
		b = append(b, `{"id":"chatcmpl-sim-`...)
	} else {
		b = append(b, `{"id":"cmpl-sim-`...)
	}
	b = strconv.AppendUint(b, g.seq, 10)
	switch {
	case g.chat && chunk:
		b = append(b, `","object":"chat.completion.chunk","created":`...)
	case g.chat:
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

func (g *gen) appendUsage(b []byte) []byte {
	b = append(b, `{"prompt_tokens":`...)
	b = appendInt(b, g.promptTokens)
	b = append(b, `,"completion_tokens":`...)
	b = appendInt(b, g.tokens)
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, g.promptTokens+g.tokens)
	return append(b, '}')
}

// appendLogprobs appends the logprobs object for tokens [from, to): chat's
// {"content":[...]} or completions' parallel arrays. offset is the text
// offset of token from (completions only).
func (g *gen) appendLogprobs(b []byte, from, to, offset int) []byte {
	if g.chat {
		b = append(b, `{"content":[`...)
		for i := from; i < to; i++ {
			if i > from {
				b = append(b, ',')
			}
			tok := g.token(i)
			b = appendChatLogprob(b, tok, g.logprob(i, 0))
			b = append(b, `,"top_logprobs":[`...)
			for j := 0; j < g.top; j++ {
				if j > 0 {
					b = append(b, ',')
				}
				alt := tok
				if j > 0 {
					alt = g.alternative(i, j)
				}
				b = appendChatLogprob(b, alt, g.logprob(i, j))
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
		off += len(g.token(i))
	}
	b = append(b, `],"token_logprobs":[`...)
	for i := from; i < to; i++ {
		if i > from {
			b = append(b, ',')
		}
		b = appendLogprob(b, g.logprob(i, 0))
	}
	b = append(b, `],"tokens":[`...)
	for i := from; i < to; i++ {
		if i > from {
			b = append(b, ',')
		}
		b = appendString(b, g.token(i))
	}
	b = append(b, `],"top_logprobs":[`...)
	for i := from; i < to; i++ {
		if i > from {
			b = append(b, ',')
		}
		b = append(b, '{')
		for j := 0; j < g.top; j++ {
			if j > 0 {
				b = append(b, ',')
			}
			if j == 0 {
				b = appendString(b, g.token(i))
			} else {
				b = appendString(b, g.alternative(i, j))
			}
			b = append(b, ':')
			b = appendLogprob(b, g.logprob(i, j))
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
