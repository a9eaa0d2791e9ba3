package verify

import (
	"encoding/binary"
	"math"
	"strings"

	"github.com/cascade-gateway/cascade/router"
)

// Word cues, matched on lower-cased whole words. They describe how an answer
// is phrased, not what a benchmark is about.
const (
	cueHedge = 1 + iota
	cueRefusal
	cueCorrection
	cueNegation
	cueCode
)

var cues = map[string]uint8{}

// cueLens[c] has bit n set when a cue word of n bytes starts with byte c:
// most words are not cues and skip the map lookup.
var cueLens [256]uint32

// cue returns the category of a lower-cased word, 0 for none.
func cue(w []byte) uint8 {
	if len(w) >= 32 || cueLens[w[0]]&(1<<len(w)) == 0 {
		return 0
	}
	return cues[string(w)]
}

func init() {
	for cat, words := range map[uint8]string{
		cueHedge:      "maybe perhaps possibly probably likely unlikely unclear unsure uncertain assume assuming assumed approximately roughly estimate guess might seems seem appears ambiguous depends however although",
		cueRefusal:    "sorry cannot can't unable apologize impossible insufficient",
		cueCorrection: "wait actually mistake oops correction incorrect recalculate re-evaluate reconsider",
		cueNegation:   "not except least false incorrect never",
		cueCode:       "function program code implement script python javascript class method",
	} {
		for _, w := range strings.Fields(words) {
			cues[w] = cat
			cueLens[w[0]] |= 1 << len(w)
		}
	}
}

// scanPrompt collects the prompt facts from the last user message (the
// question) and the size of all messages.
func scanPrompt(in *router.Input, p *promptFacts) {
	if in == nil {
		return
	}
	last := -1
	for i := range in.Messages {
		p.size += len(in.Messages[i].Content)
		if in.Messages[i].Role == "user" || last < 0 {
			last = i
		}
	}
	if last < 0 {
		return
	}
	q := in.Messages[last].Content
	if len(q) > maxPromptScan {
		q = q[len(q)-maxPromptScan:] // the question is at the end
	}
	p.text = q
	it := wordIter{s: q}
	for w, ok := it.next(); ok; w, ok = it.next() {
		if cue(w) == cueCode {
			p.asksCode = true
		}
	}
	numbers(q, func(v float64, _, _ int) {
		p.allNums++
		if !p.has(v) && p.nnums < maxNumbers {
			p.nums[p.nnums] = v
			p.nnums++
		}
		p.maxNum = max(p.maxNum, math.Abs(v))
	})
	options(q, p)
	if p.nopts > 0 {
		stem := q[p.stem.s:p.stem.e]
		it := wordIter{s: stem}
		for w, ok := it.next(); ok; w, ok = it.next() {
			if cue(w) == cueNegation {
				p.negated = true
			}
		}
	}
}

// options finds the last block of lettered options ("A. ...", "B) ...",
// "(C) ...") in q and the stem before it.
func options(q string, p *promptFacts) {
	var cur [maxOptions]span
	n, want := 0, byte('A')
	blockStart, curStart := 0, 0
	for i := 0; i < len(q); {
		end := strings.IndexByte(q[i:], '\n')
		if end < 0 {
			end = len(q)
		} else {
			end += i
		}
		line := q[i:end]
		letter, body := optionLine(line)
		switch {
		case letter == 'A':
			n, want, curStart = 0, 'A', i
			fallthrough
		case letter != 0 && letter == want && n > 0:
			if n < maxOptions {
				off := i + len(line) - len(body)
				cur[n] = span{off, off + len(body)}
				n++
				want++
			}
			if n >= 2 {
				p.opts, p.nopts, blockStart = cur, n, curStart
			}
		default:
			if n > 0 && letter == 0 {
				n = 0
			}
		}
		i = end + 1
	}
	if p.nopts == 0 {
		return
	}
	s := strings.LastIndex(q[:blockStart], "\n\n")
	if s < 0 {
		s = 0
	}
	p.stem = span{s, blockStart}
}

// optionLine returns the letter and text of an option line, or 0.
func optionLine(line string) (byte, string) {
	line = strings.TrimLeft(line, " \t")
	if len(line) < 3 {
		return 0, ""
	}
	i := 0
	if line[0] == '(' {
		i = 1
	}
	c := line[i]
	if c < 'A' || c > 'J' || i+2 > len(line) {
		return 0, ""
	}
	d := line[i+1]
	if !(d == ')' || d == '.' || d == ':') {
		return 0, ""
	}
	if i == 1 && d != ')' {
		return 0, ""
	}
	body := line[i+2:]
	if len(body) == 0 || (body[0] != ' ' && body[0] != '\t') {
		return 0, ""
	}
	return c, strings.TrimSpace(body)
}

// textFacts are counts over the answer text.
type textFacts struct {
	lines, repeats                     int
	hedges, refusals, corrections      int
	questions                          int
	marker                             bool
	nums, copied                       int
	last                               float64
	equations, wrong                   int
	fences, codeLines, codeBytes, defs int
	returns, examples                  int
	balance                            int // open brackets minus closed, in code
	openCalc                           bool
}

func scanAnswer(text string, p *promptFacts, t *textFacts) {
	it := wordIter{s: text}
	for w, ok := it.next(); ok; w, ok = it.next() {
		switch cue(w) {
		case cueHedge:
			t.hedges++
		case cueRefusal:
			t.refusals++
		case cueCorrection:
			t.corrections++
		}
	}
	if strings.Contains(text, "####") || strings.Contains(text, "\\boxed") || answerMarker(text) >= 0 {
		t.marker = true
	}
	numbers(text, func(v float64, _, _ int) {
		t.nums++
		t.last = v
		if p.has(v) {
			t.copied++
		}
	})
	t.questions = strings.Count(text, "?")
	if i := strings.LastIndex(text, "<<"); i >= 0 && !strings.Contains(text[i:], ">>") {
		t.openCalc = true
	}
	equations(text, t)

	// Lines: code blocks, repeats (a degenerate answer loops).
	var seen [64]uint64
	nseen := 0
	inCode := false
	for i := 0; i < len(text); {
		end := strings.IndexByte(text[i:], '\n')
		if end < 0 {
			end = len(text)
		} else {
			end += i
		}
		line := text[i:end]
		tl := strings.TrimSpace(line)
		if tl != "" {
			t.lines++
			h := lineHash(tl)
			dup := false
			for k := 0; k < nseen; k++ {
				if seen[k] == h {
					dup = true
					break
				}
			}
			if dup && len(tl) > 8 {
				t.repeats++
			} else if !dup && nseen < len(seen) {
				seen[nseen] = h
				nseen++
			}
		}
		if strings.HasPrefix(tl, "```") {
			t.fences++
			inCode = !inCode
		} else if inCode {
			t.codeLines++
			t.codeBytes += len(line) + 1
			codeLine(tl, t)
		} else if isDef(tl) {
			t.defs++
		}
		i = end + 1
	}
}

func codeLine(l string, t *textFacts) {
	if isDef(l) {
		t.defs++
	}
	if strings.HasPrefix(l, "return") {
		t.returns++
	}
	if strings.HasPrefix(l, "print(") || strings.HasPrefix(l, "assert") || strings.HasPrefix(l, "console.log") || strings.HasPrefix(l, ">>>") {
		t.examples++
	}
	inStr := byte(0)
	for i := 0; i < len(l); i++ {
		c := l[i]
		if inStr != 0 {
			if c == '\\' {
				i++
			} else if c == inStr {
				inStr = 0
			}
			continue
		}
		switch c {
		case '"', '\'':
			inStr = c
		case '#':
			return
		case '(', '[', '{':
			t.balance++
		case ')', ']', '}':
			t.balance--
		}
	}
}

func isDef(l string) bool {
	return strings.HasPrefix(l, "def ") || strings.HasPrefix(l, "function ") || strings.HasPrefix(l, "func ") ||
		strings.HasPrefix(l, "fn ") || strings.HasPrefix(l, "public ") || strings.HasPrefix(l, "class ")
}

// cutOff reports whether a long answer stops mid-way: an open code block or
// calculation, or no closing punctuation.
func cutOff(text string, t *textFacts) bool {
	s := strings.TrimRight(text, " \t\r\n")
	if len(s) < 40 {
		return false
	}
	if t.fences%2 == 1 || t.openCalc {
		return true
	}
	switch s[len(s)-1] {
	case '.', '!', '?', ')', ']', '}', '`', '"', '\'', '*', '>', '|', ':':
		return false
	}
	// A final number after an answer marker closes an answer, too.
	if t.marker && isDigit(s[len(s)-1]) {
		return false
	}
	return true
}

// choiceFeatures relates a multiple-choice answer to the options.
func choiceFeatures(text string, p *promptFacts, x *Features) {
	pick, byText := chosen(text, p)
	if pick < 0 {
		x[fNoChoice] = 1
		return
	}
	if pick >= p.nopts {
		x[fInvalidChoice] = 1
		return
	}
	x[fChoiceByText] = b2f(byText)
	var sum float64
	longest, shortest := true, true
	cl := p.opts[pick].e - p.opts[pick].s
	for i := 0; i < p.nopts; i++ {
		l := p.opts[i].e - p.opts[i].s
		sum += float64(l)
		if i != pick {
			longest = longest && cl > l
			shortest = shortest && cl < l
		}
	}
	if sum > 0 {
		x[fChoiceRelLen] = float32(float64(cl) * float64(p.nopts) / sum)
	}
	x[fChoiceLongest] = b2f(longest)
	x[fChoiceShortest] = b2f(shortest)
	x[fChoicePosition] = float32(pick) / float32(p.nopts-1)
	opt := p.text[p.opts[pick].s:p.opts[pick].e]
	stem := p.text[p.stem.s:p.stem.e]
	var n, in int
	it := wordIter{s: opt}
	for w, ok := it.next(); ok; w, ok = it.next() {
		if len(w) < 4 {
			continue
		}
		n++
		if containsWord(stem, w) {
			in++
		}
	}
	if n > 0 {
		x[fChoiceOverlap] = float32(in) / float32(n)
	}
	x[fChoiceAllNone] = b2f(containsFold(opt, "of the above") || containsFold(opt, "both") || containsFold(opt, "neither"))
}

// chosen returns the index of the option the answer picks (-1 for none) and
// whether it was named by its text rather than its letter.
func chosen(text string, p *promptFacts) (int, bool) {
	s := strings.Trim(text, " \t\r\n\"'*.:()[]")
	if len(s) == 1 && isLetterChoice(s[0]) {
		return int(s[0] - 'A'), false
	}
	if len(s) >= 2 && isLetterChoice(s[0]) && (s[1] == ')' || s[1] == '.' || s[1] == ':' || s[1] == ' ') {
		return int(s[0] - 'A'), false
	}
	if i := answerMarker(text); i >= 0 {
		r := strings.TrimLeft(text[i:], " :(*")
		if len(r) > 0 && isLetterChoice(r[0]) && (len(r) == 1 || !isAlnum(r[1])) {
			return int(r[0] - 'A'), false
		}
	}
	for i := 0; i < p.nopts; i++ {
		o := strings.Trim(p.text[p.opts[i].s:p.opts[i].e], " .")
		if o != "" && strings.EqualFold(o, s) {
			return i, true
		}
	}
	return -1, false
}

func isLetterChoice(c byte) bool { return c >= 'A' && c <= 'J' }
func isDigit(c byte) bool        { return c >= '0' && c <= '9' }
func isAlnum(c byte) bool {
	return isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'z')
}

func trim(s string) string { return strings.TrimSpace(s) }

// wordIter yields the lower-cased words of s (letters, digits, ' and -
// inside; longer than 24 bytes are skipped). It does not allocate.
type wordIter struct {
	s   string
	i   int
	buf [24]byte
}

func (w *wordIter) next() ([]byte, bool) {
	s := w.s
	for w.i < len(s) {
		// Skip to the next word byte, then copy the word lower-cased.
		for w.i < len(s) && lowerAlnum[s[w.i]] == 0 {
			w.i++
		}
		n := 0
		for ; w.i < len(s); w.i++ {
			c := s[w.i]
			lc := lowerAlnum[c]
			if lc == 0 {
				if !((c == '\'' || c == '-') && n > 0 && w.i+1 < len(s) && lowerAlnum[s[w.i+1]] != 0) {
					break
				}
				lc = c
			}
			if n < len(w.buf) {
				w.buf[n] = lc
			}
			n++
		}
		w.i++
		if n > 0 && n <= len(w.buf) {
			return w.buf[:n], true
		}
	}
	return nil, false
}

// lowerAlnum maps ASCII letters to lower case and digits to themselves;
// every other byte to 0.
var lowerAlnum = func() (t [256]byte) {
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c)
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = byte(c), byte(c)
	}
	return t
}()

func containsWord(s string, w []byte) bool {
	it := wordIter{s: s}
	for x, ok := it.next(); ok; x, ok = it.next() {
		if string(x) == string(w) {
			return true
		}
	}
	return false
}

// answerMarker finds "answer is" or "answer:" (any case) and returns the
// index just past it, or -1.
func answerMarker(s string) int {
	for off := 0; ; {
		i := strings.Index(s[off:], "nswer")
		if i < 0 {
			return -1
		}
		i += off
		off = i + 5
		if i == 0 || s[i-1]|0x20 != 'a' {
			continue
		}
		r := s[off:]
		switch {
		case len(r) >= 3 && r[0] == ' ' && r[1]|0x20 == 'i' && r[2]|0x20 == 's':
			return off + 3
		case len(r) >= 1 && r[0] == ':':
			return off + 1
		}
	}
}

func containsFold(s, sub string) bool { return indexFold(s, sub) >= 0 }

// indexFold is strings.Index, ASCII case-insensitive, for a lower-case sub.
func indexFold(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		ok := true
		for j := 0; j < len(sub); j++ {
			c := s[i+j]
			if c >= 'A' && c <= 'Z' {
				c |= 0x20
			}
			if c != sub[j] {
				ok = false
				break
			}
		}
		if ok {
			return i
		}
	}
	return -1
}

func lineHash(s string) uint64 {
	// Eight bytes a step: repeated lines are what it must find, and long
	// lines are common.
	h := uint64(14695981039346656037) ^ uint64(len(s))
	for ; len(s) >= 8; s = s[8:] {
		h = (h ^ binary.LittleEndian.Uint64([]byte(s[:8]))) * 0x9e3779b97f4a7c15
		h ^= h >> 29
	}
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
