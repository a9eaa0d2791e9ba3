package sim

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

// plan is what a request will produce, fixed before generation starts.
type plan struct {
	hash         uint64 // of the prompt text: the answer depends on nothing else
	promptTokens int
	tokens       int
	finish       string // "stop", or "length" when max_tokens cut the answer
	chat         bool
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

// makePlan derives the answer's shape from the request.
func (s *Server) makePlan(req *request, chat bool) plan {
	h := uint64(fnvOffset)
	chars := 0
	if chat {
		for i := range req.Messages {
			m := &req.Messages[i]
			h = fnv(h, m.Role)
			h = fnv(h, "\x00")
			h = fnv(h, m.Content.text)
			h = fnv(h, "\x00")
			chars += len(m.Content.text)
		}
	} else {
		h = fnv(h, req.Prompt.text)
		chars = len(req.Prompt.text)
	}
	p := plan{hash: mix(h), chat: chat, finish: "stop"}
	p.promptTokens = chars / 4
	if !chat && req.Prompt.tokens > 0 {
		p.promptTokens = req.Prompt.tokens
	}
	if p.promptTokens < 1 {
		p.promptTokens = 1
	}
	span := uint64(s.cfg.MaxTokens - s.cfg.MinTokens + 1)
	p.tokens = s.cfg.MinTokens + int(p.hash%span)
	limit := req.MaxTokens
	if chat && req.MaxCompletionTokens != nil {
		limit = req.MaxCompletionTokens
	}
	if limit != nil && *limit < p.tokens {
		p.tokens, p.finish = *limit, "length"
	}
	return p
}

// word returns the vocabulary index of token i.
func (p *plan) word(i int) int {
	return int(mix(p.hash+uint64(i+1)*0x9e3779b97f4a7c15)) & wordMask
}

// token returns the text of token i.
func (p *plan) token(i int) string {
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

// logprob returns the log probability of token i (j == 0) or of its j-th
// alternative: deterministic, in (-2, 0], alternatives less likely.
func (p *plan) logprob(i, j int) float64 {
	lp := -float64(mix(p.hash^uint64(i)*0xd6e8feb86659fd93)%2000) / 1000
	if j > 0 {
		lp -= 0.5 + 0.75*float64(j)
	}
	return lp
}
