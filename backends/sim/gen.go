package sim

import (
	"math"
	"strings"
)

// words is the vocabulary answers are drawn from; one word is one token.
// Its length must stay 64 (indices are masked) and its entries distinct and
// free of characters JSON would escape.
var words = [64]string{
	"the", "model", "answer", "is", "a", "simple", "request", "token",
	"cascade", "small", "large", "cost", "latency", "quality", "route", "prompt",
	"of", "and", "to", "in", "that", "it", "with", "for",
	"energy", "budget", "cache", "stream", "server", "client", "signal", "value",
	"because", "when", "then", "every", "some", "many", "few", "more",
	"fast", "slow", "clear", "short", "long", "good", "better", "best",
	"data", "test", "result", "system", "reason", "choice", "step", "plan",
	"yes", "no", "maybe", "here", "there", "now", "again", "done",
}

// spaced holds the words with a leading space: every token but a chat
// answer's first one.
var spaced = func() (s [64]string) {
	for i, w := range words {
		s[i] = " " + w
	}
	return s
}()

const wordMask = len(words) - 1

// maxTopLogprobs is the most alternatives a request may ask for (OpenAI's
// limit for top_logprobs).
const maxTopLogprobs = 20

// hedges are the openings of low-confidence answers, one token a word.
// Their words are not in the vocabulary, so no alternative equals them.
var hedges = [2][]string{
	{"I'm", " not", " sure,", " but", " I", " think"},
	{"Perhaps,", " though", " I", " cannot", " be", " certain:"},
}

// spacedHedges are hedges with a leading space on the first token too, for
// completions, which continue the prompt's text.
var spacedHedges = func() (s [len(hedges)][]string) {
	for i, h := range hedges {
		s[i] = append([]string{" " + h[0]}, h[1:]...)
	}
	return s
}()

// Prompt markers that force the difficulty; see the package doc.
const (
	hardMarker = "[[hard]]"
	easyMarker = "[[easy]]"
)

// plan is what one choice will produce, fixed before generation starts.
type plan struct {
	hash   uint64 // of the prompt text and the choice index: the answer depends on nothing else
	tokens int
	finish string // "stop", or "length" when max_tokens cut the answer
	chat   bool
	hard   bool // answered with low confidence
	hedge  uint8
}

func fnv(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

const fnvOffset = 14695981039346656037

// mix is splitmix64's finaliser: a cheap, well-spread hash of x.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// unit maps x to [0, 1).
func unit(x uint64) float64 { return float64(x>>11) / (1 << 53) }

// plan fills g's choices and prompt size from the request.
func (s *Server) plan(req *request, chat bool, g *gen) {
	h := uint64(fnvOffset)
	chars := 0
	marker := 0 // 1: easy, 2: hard
	see := func(text string) {
		if marker < 2 && strings.Contains(text, "[[") {
			if strings.Contains(text, hardMarker) {
				marker = 2
			} else if strings.Contains(text, easyMarker) {
				marker = 1
			}
		}
	}
	if chat {
		for i := range req.Messages {
			m := &req.Messages[i]
			h = fnv(h, m.Role)
			h = fnv(h, "\x00")
			h = fnv(h, m.Content.text)
			h = fnv(h, "\x00")
			chars += len(m.Content.text)
			see(m.Content.text)
		}
	} else {
		h = fnv(h, req.Prompt.text)
		chars = len(req.Prompt.text)
		if req.Prompt.tokens == 0 {
			see(req.Prompt.text)
		}
	}
	h = mix(h)
	g.promptTokens = chars / 4
	if !chat && req.Prompt.tokens > 0 {
		g.promptTokens = req.Prompt.tokens
	}
	if g.promptTokens < 1 {
		g.promptTokens = 1
	}
	hard := marker == 2 || marker == 0 && unit(mix(h^0x5851f42d4c957f2d)) < s.cfg.HardShare
	limit := req.MaxTokens
	if chat && req.MaxCompletionTokens != nil {
		limit = req.MaxCompletionTokens
	}
	g.n = 1
	if req.N != nil {
		g.n = *req.N
	}
	span := uint64(s.cfg.MaxTokens - s.cfg.MinTokens + 1)
	for k := range g.n {
		p := &g.choices[k]
		p.hash = h // choice 0 answers as if n were 1
		if k > 0 {
			p.hash = mix(h + uint64(k)*0x9e3779b97f4a7c15)
		}
		p.chat, p.hard, p.finish = chat, hard, "stop"
		p.hedge = uint8(p.hash>>32) % uint8(len(hedges))
		p.tokens = s.cfg.MinTokens + int(p.hash%span)
		if limit != nil && *limit < p.tokens {
			p.tokens, p.finish = *limit, "length"
		}
	}
}

// word returns the vocabulary index of token i.
func (p *plan) word(i int) int {
	return int(mix(p.hash+uint64(i+1)*0x9e3779b97f4a7c15)) & wordMask
}

// token returns the text of token i.
func (p *plan) token(i int) string {
	if p.hard && i < len(hedges[p.hedge]) {
		if p.chat {
			return hedges[p.hedge][i]
		}
		return spacedHedges[p.hedge][i]
	}
	if i == 0 && p.chat {
		return words[p.word(i)]
	}
	return spaced[p.word(i)]
}

// alternative returns the text of the j-th alternative (j >= 1) to token i;
// alternatives differ from the token and from each other because 7*j is
// never a multiple of 64 for j < 64.
func (p *plan) alternative(i, j int) string {
	k := (p.word(i) + 7*j) & wordMask
	if i == 0 && p.chat {
		return words[k]
	}
	return spaced[k]
}

// dist returns the log probability of token i, which is always the most
// likely one (greedy decoding), and the log of the ratio between
// consecutive alternatives: the j-th alternative's log probability is
// lp + j*lr. With the ratio r = c(1-p) (c < 1) the probabilities of the
// token and all its alternatives sum to p/(1-r) <= 1.
//
// A confident answer has p in [0.9, 0.999) for its first token and 90 % of
// the others, [0.5, 0.9) for the rest, and c = 0.5: the second choice is
// far behind. A low-confidence one has p in [0.15, 0.5) for its first token
// and 70 % of the others, [0.6, 0.95) for the rest (the words that hold a
// sentence together stay easy), and c = 0.9: the alternatives are nearly as
// likely. Hence mean token logprob about -0.08 against -0.85, first token
// probability 0.9+ against 0.5-.
func (p *plan) dist(i int) (lp, lr float64) {
	x := mix(p.hash ^ uint64(i+1)*0xd6e8feb86659fd93)
	band, v := unit(x), unit(mix(x))
	var prob, c float64
	switch {
	case !p.hard && (i == 0 || band >= 0.1):
		prob, c = 0.9+0.099*v, 0.5
	case !p.hard:
		prob, c = 0.5+0.4*v, 0.5
	case i > 0 && band < 0.3:
		prob, c = 0.6+0.35*v, 0.9
	default:
		prob, c = 0.15+0.35*v, 0.9
	}
	return math.Log(prob), math.Log(c * (1 - prob))
}
