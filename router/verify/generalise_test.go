package verify

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// proseAnswer is a prose answer of n tokens whose chosen tokens have
// probability p and whose four alternatives each follow at ratio r of the
// one before (r near 1: flat, r near 0: the chosen token stands alone).
func proseAnswer(n int, p, r float64) *Answer {
	words := strings.Fields("The light we see from the sky is blue because air scatters short wavelengths more than long ones, so blue reaches the eye from every direction")
	var b strings.Builder
	a := &Answer{FinishReason: "stop"}
	for i := range n {
		w := words[i%len(words)]
		if i > 0 {
			w = " " + w
		}
		b.WriteString(w)
		lp := float32(math.Log(p))
		top := make([]float32, 5)
		for j := range top {
			top[j] = lp + float32(j)*float32(math.Log(r))
		}
		a.Tokens = append(a.Tokens, Token{Logprob: lp, Top: top})
	}
	a.Text = b.String() + "."
	return a
}

// The token confidence of a free-form answer decides its score: the format
// alone (prose, never seen with logprobs in training) does not.
func TestScoreProseFollowsTokenConfidence(t *testing.T) {
	v := Default()
	in := prompt("Why is the sky blue? Explain briefly.")
	for _, n := range []int{12, 40, 200} {
		sure := v.Score(in, proseAnswer(n, 0.95, 0.03))
		doubt := v.Score(in, proseAnswer(n, 0.3, 0.9))
		plain := v.Score(in, &Answer{Text: proseAnswer(n, 0.5, 0.5).Text, FinishReason: "stop"})
		// A sure first token does not make a doubtful body confident.
		body := proseAnswer(n, 0.3, 0.9)
		body.Tokens[0] = proseAnswer(1, 0.95, 0.03).Tokens[0]
		if s := v.Score(in, body); s-sure < 0.2 {
			t.Errorf("%d tokens: sure first token, flat body scores %.3f against %.3f all sure: the body must count", n, s, sure)
		}
		t.Logf("%d tokens: confident %.3f, flat %.3f, text only %.3f", n, sure, doubt, plain)
		if sure >= 0.5 {
			t.Errorf("%d tokens: confident prose scores %.3f, want < 0.5", n, sure)
		}
		if doubt < 0.5 || doubt-sure < 0.3 {
			t.Errorf("%d tokens: flat logprobs score %.3f against %.3f confident: want >= 0.5 and well above", n, doubt, sure)
		}
		if plain < 0.1 || plain > 0.7 {
			t.Errorf("%d tokens: prose without logprobs scores %.3f, want a middling risk", n, plain)
		}
	}
}

// simAnswer asks the simulator for a chat answer with logprobs and returns
// what the Collector reads from it, streamed or not.
func simAnswer(t *testing.T, url, content string, top int, stream bool) Answer {
	t.Helper()
	body := `{"model":"m","logprobs":true,"top_logprobs":` + strconv.Itoa(top) + `,"stream":` + strconv.FormatBool(stream) +
		`,"messages":[{"role":"user","content":` + strconv.Quote(content) + `}]}`
	resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, %v: %s", resp.StatusCode, err, b)
	}
	var c Collector
	if !stream {
		c.AddBody(b)
	} else {
		for _, line := range bytes.Split(b, []byte("\n")) {
			if len(bytes.TrimSpace(line)) > 0 {
				c.AddChunk(line)
			}
		}
	}
	a := c.Answer()
	if len(a.Tokens) == 0 || a.Text == "" {
		t.Fatalf("no answer with logprobs in %s", b)
	}
	// The Collector's buffers are reused; keep copies.
	a.Text = strings.Clone(a.Text)
	toks := make([]Token, len(a.Tokens))
	for i, tk := range a.Tokens {
		toks[i] = Token{Logprob: tk.Logprob, Top: append([]float32(nil), tk.Top...), Blank: tk.Blank}
	}
	a.Tokens = toks
	return a
}

// The simulator answers "[[easy]]" prompts confidently and "[[hard]]" ones
// with flat alternatives and hedges: the verifier must pass the first and
// escalate the second at its 0.5 decision point, whatever the length.
func TestScoreSimulatorAnswers(t *testing.T) {
	v := Default()
	questions := []string{"Name a colour.", "Prove it.", "What is the capital of France?", "Write a haiku about rain.", "Summarise the causes of the First World War."}
	for _, tc := range []struct{ min, max, top int }{{12, 60, 5}, {6, 6, 2}, {200, 400, 5}, {12, 60, 0}} {
		srv := httptest.NewServer(sim.New(sim.Config{Model: "m", MinTokens: tc.min, MaxTokens: tc.max}))
		for _, stream := range []bool{false, true} {
			for _, q := range questions {
				easy := simAnswer(t, srv.URL, "[[easy]] "+q, tc.top, stream)
				hard := simAnswer(t, srv.URL, "[[hard]] "+q, tc.top, stream)
				se, sh := v.Score(prompt("[[easy]] "+q), &easy), v.Score(prompt("[[hard]] "+q), &hard)
				t.Logf("%d-%d tokens, top %d, stream %v %q: easy %.3f, hard %.3f", tc.min, tc.max, tc.top, stream, q, se, sh)
				if se >= 0.5 || sh < 0.5 || sh <= se {
					t.Errorf("%d-%d tokens, top %d, stream %v %q: easy %.3f, hard %.3f; want easy < 0.5 <= hard", tc.min, tc.max, tc.top, stream, q, se, sh)
				}
			}
		}
		srv.Close()
	}
}
