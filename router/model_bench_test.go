package router

import (
	"math"
	"strings"
	"testing"
)

func benchPrompt(n int) string {
	const text = "A train leaves the station at 3:15 pm travelling at 60 km/h. " +
		"Explain, step by step, when it reaches the city 150 km away, and why the answer changes " +
		"if it stops for 12 minutes halfway. Use a table:\n| stop | time |\n|---|---|\n- list each step\n"
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(text)
	}
	return b.String()[:n]
}

func BenchmarkScore(b *testing.B) {
	m := DefaultModel()
	for _, size := range []struct {
		name string
		n    int
	}{{"200B", 200}, {"4KB", 4096}} {
		in := &Input{Messages: []Message{{Role: "user", Content: benchPrompt(size.n)}}}
		b.Run(size.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size.n))
			var s float64
			c0 := cpuTime()
			for b.Loop() {
				s += m.Score(in)
			}
			if c := cpuTime() - c0; c > 0 {
				b.ReportMetric(float64(c)/float64(b.N), "cpu-ns/op")
			}
			if math.IsNaN(s) {
				b.Fatal("NaN")
			}
		})
	}
}

func BenchmarkExplain(b *testing.B) {
	m := DefaultModel()
	in := &Input{Messages: []Message{{Role: "user", Content: benchPrompt(200)}}}
	b.ReportAllocs()
	for b.Loop() {
		m.Explain(in, 3)
	}
}

// FuzzScore: any input scores in [0, 1] without panicking, and explanations
// never panic either.
func FuzzScore(f *testing.F) {
	f.Add("", "user", false, 0)
	f.Add("What is 2+2?", "user", false, 16)
	f.Add("```python\nprint('hi')\n```\n| a | b |\n- x\n1. y", "system", true, 4096)
	f.Add(`{"messages":[{"role":"user","content":[{"type":"text","text":"{\"a\":[[[[[[[[1]]]]]]]]}"}]}]}`, "tool", true, -5)
	f.Add(strings.Repeat("[{", 5000)+strings.Repeat("}]", 5000), "assistant", false, 1<<30)
	f.Add("\xff\xfe\x00\x01\x80\xc3\x28 3.14,15/ 1,000.5.6 ''' \"\"", "", false, 0)
	f.Add("水の沸点は何度ですか？ Почему небо голубое? ¿Por qué?", "developer", false, 100)
	f.Add(strings.Repeat("9", 10000)+"."+strings.Repeat("1", 10000), "user", false, 0)
	m := DefaultModel()
	f.Fuzz(func(t *testing.T, text, role string, tools bool, maxTokens int) {
		in := &Input{
			Messages: []Message{{Role: role, Content: text}, {Role: "user", Content: text}},
			HasTools: tools, HasResponseFormat: !tools, MaxTokens: maxTokens,
		}
		s := m.Score(in)
		if !(s >= 0 && s <= 1) {
			t.Fatalf("score %v", s)
		}
		for _, r := range m.Explain(in, 5) {
			if math.IsNaN(r.Contribution) || r.Feature == "" {
				t.Fatalf("reason %+v", r)
			}
		}
		if l := (LengthScorer{}).Score(in); !(l >= 0 && l <= 1) {
			t.Fatalf("length score %v", l)
		}
	})
}
