package verify

import (
	"bytes"
	"math"
	"unicode/utf8"
	"unsafe"
)

// Collector accumulates the verifier's input from an OpenAI-compatible
// answer while the gateway relays it: AddChunk for each streamed
// chat/completions or completions chunk, AddBody for a whole non-streaming
// response. It reads choice 0's text (delta.content, message.content or
// text), its logprobs — chat's logprobs.content[].{token, logprob,
// top_logprobs} or the legacy completions shape logprobs.{tokens,
// token_logprobs, top_logprobs} — and its finish_reason. Other choices and
// fields are ignored; malformed JSON is skipped as far as it cannot be read,
// never panics.
//
// A Collector is not safe for concurrent use; keep one per request (they can
// be pooled: Reset keeps the buffers). Once its buffers have grown, feeding
// it does not allocate.
type Collector struct {
	text   []byte
	finish string
	toks   []tokRec
	alts   []float32
	out    []Token
	chunks int
}

type tokRec struct {
	lp     float32
	blank  bool
	a0, a1 int32 // alts[a0:a1] are its top_logprobs
}

// Bounds on what one answer may accumulate.
const (
	maxCollectText   = 1 << 20
	maxCollectTokens = 1 << 16
	maxCollectAlts   = 1 << 20
	maxDepth         = 32
)

// Reset empties the collector for another answer, keeping its buffers.
func (c *Collector) Reset() {
	c.text, c.toks, c.alts, c.out = c.text[:0], c.toks[:0], c.alts[:0], c.out[:0]
	c.finish, c.chunks = "", 0
}

// AddChunk reads one streamed chunk: the JSON of an SSE data line, with or
// without its "data:" prefix; "[DONE]" is ignored.
func (c *Collector) AddChunk(chunk []byte) { c.add(chunk) }

// AddBody reads a whole non-streaming chat/completions or completions
// response.
func (c *Collector) AddBody(body []byte) { c.add(body) }

// Chunks returns how many chunks or bodies carried something for choice 0.
func (c *Collector) Chunks() int { return c.chunks }

// Answer returns what has been collected. Its Text and Tokens share the
// collector's buffers: they are valid until the collector is fed or reset
// again (copy Text to keep it).
func (c *Collector) Answer() Answer {
	c.out = c.out[:0]
	for _, t := range c.toks {
		c.out = append(c.out, Token{Logprob: t.lp, Blank: t.blank, Top: c.alts[t.a0:t.a1:t.a1]})
	}
	a := Answer{FinishReason: c.finish, Tokens: c.out}
	if len(c.out) == 0 {
		a.Tokens = nil
	}
	if len(c.text) > 0 {
		a.Text = unsafe.String(&c.text[0], len(c.text))
	}
	return a
}

func (c *Collector) add(b []byte) {
	b = bytes.TrimSpace(b)
	b = bytes.TrimPrefix(b, []byte("data:"))
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return // "[DONE]", comments, junk
	}
	l := lex{b: b}
	l.i++
	for {
		k, ok := l.member()
		if !ok {
			return
		}
		if string(k) == "choices" {
			c.choices(&l)
		} else {
			l.skip(0)
		}
	}
}

func (c *Collector) choices(l *lex) {
	if !l.open('[') {
		l.skip(0)
		return
	}
	for l.element() {
		c.choice(l)
	}
}

// choice reads one choice, keeping it only if its index is 0 (or absent).
func (c *Collector) choice(l *lex) {
	if !l.open('{') {
		l.skip(0)
		return
	}
	nText, nToks, nAlts, finish := len(c.text), len(c.toks), len(c.alts), c.finish
	index := float32(0)
	for {
		k, ok := l.member()
		if !ok {
			break
		}
		switch string(k) {
		case "index":
			index = l.number()
		case "delta", "message":
			c.message(l)
		case "text":
			c.appendText(l)
		case "logprobs":
			c.logprobs(l)
		case "finish_reason":
			c.setFinish(l)
		default:
			l.skip(0)
		}
	}
	if index != 0 {
		c.text, c.toks, c.alts, c.finish = c.text[:nText], c.toks[:nToks], c.alts[:nAlts], finish
		return
	}
	if len(c.text) != nText || len(c.toks) != nToks || c.finish != finish {
		c.chunks++
	}
}

func (c *Collector) message(l *lex) {
	if !l.open('{') {
		l.skip(0)
		return
	}
	for {
		k, ok := l.member()
		if !ok {
			return
		}
		if string(k) == "content" {
			c.appendText(l)
		} else {
			l.skip(0)
		}
	}
}

func (c *Collector) appendText(l *lex) {
	raw, ok := l.str()
	if !ok {
		l.skip(0)
		return
	}
	if len(c.text)+len(raw) > maxCollectText {
		return
	}
	c.text = appendUnescaped(c.text, raw)
}

func (c *Collector) setFinish(l *lex) {
	raw, ok := l.str()
	if !ok {
		l.skip(0) // null
		return
	}
	switch string(raw) {
	case "stop":
		c.finish = "stop"
	case "length":
		c.finish = "length"
	case "content_filter":
		c.finish = "content_filter"
	case "tool_calls":
		c.finish = "tool_calls"
	case "function_call":
		c.finish = "function_call"
	default:
		c.finish = "other"
	}
}

// logprobs reads chat's {content: [...]} or legacy completions' {tokens,
// token_logprobs, top_logprobs} (parallel arrays, in any key order).
func (c *Collector) logprobs(l *lex) {
	if !l.open('{') {
		l.skip(0)
		return
	}
	base := len(c.toks)
	for {
		k, ok := l.member()
		if !ok {
			return
		}
		switch string(k) {
		case "content":
			if !l.open('[') {
				l.skip(0)
				continue
			}
			for l.element() {
				c.chatToken(l)
			}
		case "tokens":
			if !l.open('[') {
				l.skip(0)
				continue
			}
			for i := base; l.element(); i++ {
				raw, ok := l.str()
				if !ok {
					l.skip(0)
				}
				if t := c.tok(i); t != nil {
					t.blank = ok && blankRaw(raw)
				}
			}
		case "token_logprobs":
			if !l.open('[') {
				l.skip(0)
				continue
			}
			for i := base; l.element(); i++ {
				v := l.number()
				if t := c.tok(i); t != nil {
					t.lp = v
				}
			}
		case "top_logprobs":
			if !l.open('[') {
				l.skip(0)
				continue
			}
			for i := base; l.element(); i++ {
				t := c.tok(i)
				if !l.open('{') {
					l.skip(0)
					continue
				}
				a0 := len(c.alts)
				for {
					_, ok := l.member()
					if !ok {
						break
					}
					c.addAlt(l.number())
				}
				if t != nil {
					t.a0, t.a1 = int32(a0), int32(len(c.alts))
				}
			}
		default:
			l.skip(0)
		}
	}
}

// tok returns token i, growing the list to it; nil past the bound.
func (c *Collector) tok(i int) *tokRec {
	if i >= maxCollectTokens {
		return nil
	}
	for len(c.toks) <= i {
		n := int32(len(c.alts))
		c.toks = append(c.toks, tokRec{a0: n, a1: n})
	}
	return &c.toks[i]
}

func (c *Collector) addAlt(v float32) {
	if len(c.alts) < maxCollectAlts {
		c.alts = append(c.alts, v)
	}
}

func (c *Collector) chatToken(l *lex) {
	if !l.open('{') {
		l.skip(0)
		return
	}
	n := len(c.toks)
	t := c.tok(n)
	for {
		k, ok := l.member()
		if !ok {
			if l.bad { // cut off: drop the half-read token
				c.toks = c.toks[:min(n, len(c.toks))]
			}
			return
		}
		switch string(k) {
		case "token":
			raw, ok := l.str()
			if !ok {
				l.skip(0)
			} else if t != nil {
				t.blank = blankRaw(raw)
			}
		case "logprob":
			v := l.number()
			if t != nil {
				t.lp = v
			}
		case "top_logprobs":
			if !l.open('[') {
				l.skip(0)
				continue
			}
			a0 := len(c.alts)
			for l.element() {
				if !l.open('{') {
					l.skip(0)
					continue
				}
				for {
					k, ok := l.member()
					if !ok {
						break
					}
					if string(k) == "logprob" {
						c.addAlt(l.number())
					} else {
						l.skip(0)
					}
				}
			}
			if t != nil {
				t.a0, t.a1 = int32(a0), int32(len(c.alts))
			}
		default:
			l.skip(0)
		}
	}
}

// blankRaw reports whether a raw JSON string is whitespace only.
func blankRaw(raw []byte) bool {
	for i := 0; i < len(raw); i++ {
		switch raw[i] {
		case ' ', '\t', '\n', '\r':
		case '\\':
			if i+1 < len(raw) && (raw[i+1] == 'n' || raw[i+1] == 't' || raw[i+1] == 'r') {
				i++
				continue
			}
			return false
		default:
			return false
		}
	}
	return true
}

// lex is a minimal JSON reader over a byte slice: just enough to walk to the
// fields above without building values. Every method advances or marks the
// input bad, so loops over members and elements end.
type lex struct {
	b   []byte
	i   int
	bad bool
}

func (l *lex) ws() {
	for l.i < len(l.b) {
		switch l.b[l.i] {
		case ' ', '\t', '\n', '\r':
			l.i++
		default:
			return
		}
	}
}

// open consumes the opening bracket c if it comes next.
func (l *lex) open(c byte) bool {
	l.ws()
	if l.bad || l.i >= len(l.b) || l.b[l.i] != c {
		return false
	}
	l.i++
	return true
}

// member reads the next key of an object whose '{' was consumed and its ':';
// false at the closing '}' (consumed) or on bad input.
func (l *lex) member() ([]byte, bool) {
	l.ws()
	if l.bad || l.i >= len(l.b) {
		l.bad = true
		return nil, false
	}
	if l.b[l.i] == ',' {
		l.i++
		l.ws()
	}
	if l.i < len(l.b) && l.b[l.i] == '}' {
		l.i++
		return nil, false
	}
	k, ok := l.str()
	if !ok {
		l.bad = true
		return nil, false
	}
	l.ws()
	if l.i >= len(l.b) || l.b[l.i] != ':' {
		l.bad = true
		return nil, false
	}
	l.i++
	return k, true
}

// element reports whether another element of an array whose '[' was
// consumed follows; false at the closing ']' (consumed) or on bad input.
func (l *lex) element() bool {
	l.ws()
	if l.bad || l.i >= len(l.b) {
		l.bad = true
		return false
	}
	if l.b[l.i] == ',' {
		l.i++
		l.ws()
	}
	if l.i < len(l.b) && l.b[l.i] == ']' {
		l.i++
		return false
	}
	if l.i >= len(l.b) {
		l.bad = true
		return false
	}
	return true
}

// str reads a string and returns its raw (still escaped) content.
func (l *lex) str() ([]byte, bool) {
	l.ws()
	if l.bad || l.i >= len(l.b) || l.b[l.i] != '"' {
		return nil, false
	}
	start := l.i + 1
	for j := start; j < len(l.b); j++ {
		switch l.b[j] {
		case '\\':
			j++
		case '"':
			l.i = j + 1
			return l.b[start:j], true
		}
	}
	l.bad = true
	return nil, false
}

// number reads a number; anything else (null) is skipped and reads as 0.
func (l *lex) number() float32 {
	l.ws()
	start := l.i
	for l.i < len(l.b) {
		c := l.b[l.i]
		if !(isDigit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E') {
			break
		}
		l.i++
	}
	if l.i == start {
		l.skip(0)
		return 0
	}
	return parseJSONNumber(l.b[start:l.i])
}

// skip reads over one value of any kind.
func (l *lex) skip(depth int) {
	l.ws()
	if l.bad || l.i >= len(l.b) || depth > maxDepth {
		l.bad = true
		return
	}
	switch l.b[l.i] {
	case '"':
		if _, ok := l.str(); !ok {
			l.bad = true
		}
	case '{':
		l.i++
		for {
			if _, ok := l.member(); !ok {
				return
			}
			l.skip(depth + 1)
		}
	case '[':
		l.i++
		for l.element() {
			l.skip(depth + 1)
		}
	default:
		start := l.i
		for l.i < len(l.b) {
			switch l.b[l.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				if l.i == start {
					l.bad = true
				}
				return
			}
			l.i++
		}
	}
}

// parseJSONNumber parses a JSON number without allocating; malformed → 0.
func parseJSONNumber(b []byte) float32 {
	i, neg := 0, false
	if i < len(b) && b[i] == '-' {
		neg, i = true, i+1
	}
	var m float64
	exp := 0
	for ; i < len(b) && isDigit(b[i]); i++ {
		m = m*10 + float64(b[i]-'0')
	}
	if i < len(b) && b[i] == '.' {
		for i++; i < len(b) && isDigit(b[i]); i++ {
			m = m*10 + float64(b[i]-'0')
			exp--
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		eneg := false
		if i < len(b) && (b[i] == '-' || b[i] == '+') {
			eneg, i = b[i] == '-', i+1
		}
		e := 0
		for ; i < len(b) && isDigit(b[i]); i++ {
			if e < 1000 {
				e = e*10 + int(b[i]-'0')
			}
		}
		if eneg {
			e = -e
		}
		exp += e
	}
	v := m * math.Pow10(exp)
	if neg {
		v = -v
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return float32(v)
}

// appendUnescaped appends the decoded content of a raw JSON string.
func appendUnescaped(dst, raw []byte) []byte {
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' || i+1 >= len(raw) {
			dst = append(dst, c)
			continue
		}
		i++
		switch raw[i] {
		case 'n':
			dst = append(dst, '\n')
		case 't':
			dst = append(dst, '\t')
		case 'r':
			dst = append(dst, '\r')
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'u':
			r, n := hex4(raw[i+1:])
			if n == 0 {
				dst = append(dst, '\\', 'u')
				continue
			}
			i += n
			if utf16High(r) && i+2 < len(raw) && raw[i+1] == '\\' && raw[i+2] == 'u' {
				if r2, n2 := hex4(raw[i+3:]); n2 > 0 && r2 >= 0xdc00 && r2 <= 0xdfff {
					r = 0x10000 + (r-0xd800)<<10 + (r2 - 0xdc00)
					i += 2 + n2
				}
			}
			dst = utf8.AppendRune(dst, r)
		default: // " \ /
			dst = append(dst, raw[i])
		}
	}
	return dst
}

func utf16High(r rune) bool { return r >= 0xd800 && r <= 0xdbff }

func hex4(b []byte) (rune, int) {
	if len(b) < 4 {
		return 0, 0
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case isDigit(c):
			r = r<<4 | rune(c-'0')
		case c|0x20 >= 'a' && c|0x20 <= 'f':
			r = r<<4 | rune(c|0x20-'a'+10)
		default:
			return 0, 0
		}
	}
	return r, 4
}
