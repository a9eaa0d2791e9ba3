package verify

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// Chunks as vLLM's OpenAI server streams them for
// {"stream": true, "logprobs": true, "top_logprobs": 2}.
var chatStream = []string{
	`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`,
	`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"delta":{"content":" The"},"logprobs":{"content":[{"token":" The","logprob":-0.25,"bytes":[32,84,104,101],"top_logprobs":[{"token":" The","logprob":-0.25,"bytes":[32,84,104,101]},{"token":" A","logprob":-1.5,"bytes":[32,65]}]}]},"finish_reason":null}]}`,
	`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"delta":{"content":" answer is \"B\"\n"},"logprobs":{"content":[{"token":" answer","logprob":-0.01,"top_logprobs":[{"token":" answer","logprob":-0.01},{"token":" result","logprob":-4.6}]},{"token":" is \"B\"\n","logprob":-2.0,"top_logprobs":[]}]},"finish_reason":null}]}`,
	`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length","stop_reason":null}]}`,
	`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"llama-3.1-8b-instruct","choices":[],"usage":{"prompt_tokens":10,"total_tokens":14,"completion_tokens":4}}`,
	`data: [DONE]`,
}

func TestCollectorChatStream(t *testing.T) {
	var c Collector
	for _, ch := range chatStream {
		c.AddChunk([]byte(ch))
	}
	a := c.Answer()
	if a.Text != " The answer is \"B\"\n" {
		t.Fatalf("text %q", a.Text)
	}
	if a.FinishReason != "length" {
		t.Fatalf("finish %q", a.FinishReason)
	}
	if len(a.Tokens) != 3 {
		t.Fatalf("%d tokens, want 3", len(a.Tokens))
	}
	want := []struct {
		lp  float32
		top []float32
	}{{-0.25, []float32{-0.25, -1.5}}, {-0.01, []float32{-0.01, -4.6}}, {-2, nil}}
	for i, w := range want {
		got := a.Tokens[i]
		if got.Logprob != w.lp || len(got.Top) != len(w.top) {
			t.Fatalf("token %d = %+v, want %+v", i, got, w)
		}
		for k := range w.top {
			if got.Top[k] != w.top[k] {
				t.Fatalf("token %d top %v, want %v", i, got.Top, w.top)
			}
		}
	}
	if c.Chunks() != 3 {
		t.Fatalf("chunks %d, want 3", c.Chunks())
	}
	c.Reset()
	if a := c.Answer(); a.Text != "" || a.Tokens != nil || a.FinishReason != "" {
		t.Fatalf("after reset: %+v", a)
	}
}

func TestCollectorBodies(t *testing.T) {
	for _, tc := range []struct {
		name, body, text, finish string
		lps                      []float32
		tops                     []int
		blank                    []bool
	}{
		{
			name:   "chat",
			body:   `{"id":"chatcmpl-2","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"42\u00e9 \ud83d\ude00","tool_calls":[]},"logprobs":{"content":[{"token":"42","logprob":-0.5,"bytes":[52,50],"top_logprobs":[{"token":"42","logprob":-0.5},{"token":"24","logprob":-1.2},{"token":"4","logprob":-3e-1}]}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1}}`,
			text:   "42é 😀",
			finish: "stop",
			lps:    []float32{-0.5},
			tops:   []int{3},
			blank:  []bool{false},
		},
		{
			name:   "legacy completions",
			body:   `{"id":"cmpl-3","object":"text_completion","model":"m","choices":[{"index":0,"text":" B\n","logprobs":{"text_offset":[0,2],"token_logprobs":[-0.1,-2.5],"tokens":[" B","\n"],"top_logprobs":[{" B":-0.1," A":-2.4},null]},"finish_reason":"stop"}]}`,
			text:   " B\n",
			finish: "stop",
			lps:    []float32{-0.1, -2.5},
			tops:   []int{2, 0},
			blank:  []bool{false, true},
		},
		{
			name: "second choice ignored",
			body: `{"choices":[{"index":1,"text":"no","finish_reason":"length"},{"index":0,"text":"yes","finish_reason":"stop"}]}`,
			text: "yes", finish: "stop",
		},
		{
			name: "no logprobs, other finish",
			body: `{"choices":[{"message":{"content":null,"refusal":"x"},"finish_reason":"something_new"}]}`,
			text: "", finish: "other",
		},
		{name: "malformed", body: `{"choices":[{"text":"ab","logprobs":{"content":[{"token":`, text: "ab"},
		{name: "not an object", body: `[1,2,3]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Collector
			c.AddBody([]byte(tc.body))
			a := c.Answer()
			if a.Text != tc.text || a.FinishReason != tc.finish || len(a.Tokens) != len(tc.lps) {
				t.Fatalf("got %q %q %d tokens, want %q %q %d", a.Text, a.FinishReason, len(a.Tokens), tc.text, tc.finish, len(tc.lps))
			}
			for i := range tc.lps {
				if math.Abs(float64(a.Tokens[i].Logprob-tc.lps[i])) > 1e-6 || len(a.Tokens[i].Top) != tc.tops[i] || a.Tokens[i].Blank != tc.blank[i] {
					t.Fatalf("token %d = %+v", i, a.Tokens[i])
				}
			}
		})
	}
}

// A stream with n = 2 interleaves the choices' chunks.
func TestCollectorInterleavedChoices(t *testing.T) {
	var c Collector
	for i := range 4 {
		c.AddChunk([]byte(fmt.Sprintf(`{"choices":[{"index":%d,"delta":{"content":"x%d"},"logprobs":{"content":[{"token":"x","logprob":-%d}]}}]}`, i%2, i, i)))
	}
	a := c.Answer()
	if a.Text != "x0x2" || len(a.Tokens) != 2 || a.Tokens[1].Logprob != -2 {
		t.Fatalf("got %q %+v", a.Text, a.Tokens)
	}
}

func TestCollectorAllocs(t *testing.T) {
	var c Collector
	chunks := make([][]byte, len(chatStream))
	for i, ch := range chatStream {
		chunks[i] = []byte(ch)
	}
	feed := func() {
		c.Reset()
		for _, ch := range chunks {
			c.AddChunk(ch)
		}
		_ = c.Answer()
	}
	feed()
	if n := testing.AllocsPerRun(100, feed); n != 0 {
		t.Fatalf("%v allocations per answer, want 0", n)
	}
}

func BenchmarkCollectorChunk(b *testing.B) {
	chunk := []byte(chatStream[1])
	var c Collector
	b.ReportAllocs()
	b.SetBytes(int64(len(chunk)))
	for i := 0; b.Loop(); i++ {
		if i%1000 == 0 {
			c.Reset()
		}
		c.AddChunk(chunk)
	}
}

func FuzzCollector(f *testing.F) {
	for _, ch := range chatStream {
		f.Add([]byte(ch))
	}
	f.Add([]byte(`{"choices":[{"text":"a\u12","logprobs":{"tokens":["a"],"token_logprobs":[null],"top_logprobs":[{"a":-1e999}]}}]}`))
	f.Add([]byte(`{"choices":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Collector
		c.AddChunk(b)
		c.AddBody(b)
		a := c.Answer()
		_ = Default().Score(nil, &a)
		if strings.Count(a.Text, "") < 0 {
			t.Fatal("unreachable")
		}
	})
}
