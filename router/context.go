package router

// Context length: a cheap estimate of a request's prompt in tokens, and
// which tiers it fits.

// tokWeight is each byte's share of a token in twelfths. English text runs
// about four characters a token, digits are grouped by three, punctuation is
// often a token of its own. Outside ASCII the lead byte of a UTF-8 sequence
// carries the weight: a two-byte letter (accented Latin, Greek, Cyrillic,
// Hebrew, Arabic) is about half a token, a three-byte character (CJK, kana,
// Hangul, Indic and South-East Asian scripts) about one, a four-byte one
// (emoji, rare ideographs) about two. Continuation bytes weigh nothing.
var tokWeight [256]uint8

func init() {
	for i := 0; i < 256; i++ {
		c := byte(i)
		var w uint8
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == ' ', c == '\t', c == '\n', c == '\r':
			w = 3
		case c >= '0' && c <= '9':
			w = 4
		case c < 0x80:
			w = 6
		case c < 0xC0: // continuation byte
			w = 0
		case c < 0xE0:
			w = 6
		case c < 0xF0:
			w = 12
		case c < 0xF8:
			w = 24
		default: // not UTF-8: a byte token each
			w = 12
		}
		tokWeight[i] = w
	}
}

// msgOverhead is the chat template's cost per message (role markers).
const msgOverhead = 4

// EstimateTokens estimates the prompt's length in tokens: every message's
// text by character class (see tokWeight) plus a few tokens of chat template
// each. It is meant to be within about ±25 % of real tokenizers on prose and
// code in any script; it reads every byte once and does not allocate.
func EstimateTokens(in *Input) int {
	var twelfths uint64
	for i := range in.Messages {
		s := in.Messages[i].Content
		var a, b, c, d uint64
		j := 0
		for ; j+4 <= len(s); j += 4 {
			a += uint64(tokWeight[s[j]])
			b += uint64(tokWeight[s[j+1]])
			c += uint64(tokWeight[s[j+2]])
			d += uint64(tokWeight[s[j+3]])
		}
		for ; j < len(s); j++ {
			a += uint64(tokWeight[s[j]])
		}
		twelfths += a + b + c + d + 12*msgOverhead
	}
	return int((twelfths + 11) / 12)
}

// need is the context a request needs on a tier: its prompt estimate plus
// the output it asked for.
func need(in *Input) int {
	n := EstimateTokens(in)
	if in.MaxTokens > 0 {
		n += in.MaxTokens
	}
	return n
}

// fitsAt reports whether tier i's context holds n tokens.
func (p *Policy) fitsAt(i, n int) bool {
	c := p.contexts[i]
	return c <= 0 || n <= c
}

// Fits reports whether a request fits tier's context (its estimated prompt
// plus max_tokens, against the tier's max_context_tokens). A tier without a
// declared context, and a name that is no tier, always fit. Pinned models
// and fallback use it; no allocations.
func (p *Policy) Fits(tier string, in *Input) bool {
	if !p.limited {
		return true
	}
	for i, t := range p.tiers {
		if t == tier {
			return p.fitsAt(i, need(in))
		}
	}
	return true
}

// MaxContext is the largest context any tier declares, 0 when one of them
// declares none (then every request fits somewhere).
func (p *Policy) MaxContext() int {
	m := 0
	for _, c := range p.contexts {
		if c <= 0 {
			return 0
		}
		m = max(m, c)
	}
	return m
}

// fit moves d to a tier whose context holds n tokens: d's own tier if it
// fits, else the cheapest bigger one that does, else the closest cheaper one
// that does. It reports false when no tier fits.
func (p *Policy) fit(d *Decision, n int) bool {
	at := 0
	for i, t := range p.tiers {
		if t == d.Tier {
			at = i
			break
		}
	}
	if p.fitsAt(at, n) {
		return true
	}
	for i := at + 1; i < len(p.tiers); i++ {
		if p.fitsAt(i, n) {
			d.Tier, d.Escalated, d.Reason = p.tiers[i], true, ReasonContext
			return true
		}
	}
	for i := at - 1; i >= 0; i-- {
		if p.fitsAt(i, n) {
			d.Tier = p.tiers[i] // still escalated, for its own reason, if above the cheapest
			if i == 0 {
				d.Escalated, d.Reason = false, ""
			}
			return true
		}
	}
	return false
}
