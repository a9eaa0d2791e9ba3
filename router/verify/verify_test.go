package verify

import (
	"math"
	"strings"
	"testing"

	"github.com/cascade-gateway/cascade/router"
)

func prompt(s string) *router.Input {
	return &router.Input{Messages: []router.Message{{Role: "user", Content: s}}}
}

func TestFeatures(t *testing.T) {
	mc := prompt("Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC. Nitrogen\nD. Helium\nAnswer:")
	for _, tc := range []struct {
		name   string
		prompt *router.Input
		a      Answer
		want   map[int]float32
	}{
		{"letter with logprobs", mc, Answer{Text: " B", Tokens: []Token{{Logprob: -0.7, Top: []float32{-0.7, -0.9, -3}}}},
			map[int]float32{fFmtChoice: 1, fHasLogprobs: 1, fOptions: 4, fChoicePosition: 1.0 / 3, fFirstRisk: float32(1 - math.Exp(-0.7))}},
		{"option named by text", mc, Answer{Text: "Carbon dioxide"}, map[int]float32{fChoiceByText: 1, fFmtChoice: 1, fHasLogprobs: 0}},
		{"letter out of range", mc, Answer{Text: "F"}, map[int]float32{fInvalidChoice: 1}},
		{"wrong arithmetic", prompt("Tom has 3 boxes of 12 eggs. How many eggs?"),
			Answer{Text: "He has 3 * 12 = <<3*12=35>>35 eggs.\n#### 35"}, map[int]float32{fFmtMath: 1, fEqWrongAny: 1, fFinalMarker: 1, fFinalInteger: 1}},
		{"right arithmetic", prompt("Tom has 3 boxes of 12 eggs. How many eggs?"),
			Answer{Text: "He has 3 x 12 = 36 eggs, and 36 / 4 = 9 per person.\nThe answer is 36."}, map[int]float32{fFmtMath: 1, fEqWrongAny: 0, fFinalCopied: 0}},
		{"truncated code", prompt("Write a Python function that reverses a list."),
			Answer{Text: "Here it is:\n```python\ndef rev(xs):\n    return xs[::-1", FinishReason: "length"},
			map[int]float32{fFmtCode: 1, fTruncated: 1, fFenceOpen: 1, fCodeDef: 1, fCodeUnbalanced: 1, fCutOff: 1}},
		{"hedged refusal", prompt("What will the stock price be tomorrow?"),
			Answer{Text: "Sorry, I cannot know that; perhaps it depends on the market."}, map[int]float32{fFmtProse: 1, fRefusal: 1, fCodeMissing: 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var x Features
			Extract(tc.prompt, &tc.a, &x)
			for i, w := range tc.want {
				if math.Abs(float64(x[i]-w)) > 1e-5 {
					t.Errorf("%s = %v, want %v", featureNames[i], x[i], w)
				}
			}
		})
	}
}

func TestEvaluate(t *testing.T) {
	for s, want := range map[string]float64{
		"3 * 12": 36, "$4,000 x 2": 8000, "(5 + 3) / 2": 4, "10% * 50": 5, "-3 + 1": -2, "2 × 3 ÷ 4": 1.5, ", 5+3": 8,
	} {
		v, ops, ok := evaluate(s)
		if !ok || ops == 0 || v != want {
			t.Errorf("evaluate(%q) = %v, %d, %v; want %v", s, v, ops, ok, want)
		}
	}
	for _, s := range []string{"2x", "abc", "(1 + 2", "1 +"} {
		if _, _, ok := evaluate(s); ok {
			t.Errorf("evaluate(%q) ok, want not an expression", s)
		}
	}
}

func TestScoreOrdersConfidence(t *testing.T) {
	v := Default()
	mc := prompt("Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC. Nitrogen\nD. Helium\nAnswer:")
	sure := v.Score(mc, &Answer{Text: " B", Tokens: []Token{{Logprob: -0.01, Top: []float32{-0.01, -5, -6, -7}}}})
	unsure := v.Score(mc, &Answer{Text: " B", Tokens: []Token{{Logprob: -1.2, Top: []float32{-1.2, -1.3, -1.4, -1.6}}}})
	if !(unsure > sure) || sure < 0 || unsure > 1 {
		t.Fatalf("sure %v, unsure %v: want 0 <= sure < unsure <= 1", sure, unsure)
	}
	if rs := v.Explain(mc, &Answer{Text: " B", Tokens: []Token{{Logprob: -1.2, Top: []float32{-1.2, -1.3}}}}, 3); len(rs) == 0 || len(rs) > 3 {
		t.Fatalf("reasons %v", rs)
	}
}

func TestParseRejects(t *testing.T) {
	for _, b := range []string{`{`, `{"format":"x"}`, `{"format":"cascade-verifier/1","features":["a"]}`} {
		if _, err := Parse([]byte(b)); err == nil {
			t.Errorf("Parse(%s) = nil error", b)
		}
	}
	b, err := Default().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(b); err != nil {
		t.Fatalf("round trip: %v", err)
	}
}

// longAnswer is a 4 KB chain-of-thought answer with every token's logprobs
// (5 alternatives each), about 1,000 tokens.
func longAnswer() (*router.Input, *Answer) {
	var b strings.Builder
	for b.Len() < 4096-64 {
		b.WriteString("Each box holds 12 eggs, so 3 boxes hold 3 * 12 = <<3*12=36>>36 eggs. ")
	}
	b.WriteString("\n#### 36")
	a := &Answer{Text: b.String(), FinishReason: "stop"}
	top := make([]float32, 5*1024)
	for i := range top {
		top[i] = -float32(i%5) - 0.05
	}
	for i := 0; i < 1024; i++ {
		a.Tokens = append(a.Tokens, Token{Logprob: -float32(i%7) * 0.1, Top: top[5*i : 5*i+5]})
	}
	return prompt("A farmer packs eggs in boxes of 12. He fills 3 boxes and sells 2 eggs. How many eggs does he have left in the boxes? Explain step by step."), a
}

func TestScoreAllocs(t *testing.T) {
	in, a := longAnswer()
	v := Default()
	if n := testing.AllocsPerRun(50, func() { v.Score(in, a) }); n != 0 {
		t.Fatalf("%v allocations per score, want 0", n)
	}
}

func BenchmarkScore4KB(b *testing.B) {
	in, a := longAnswer()
	v := Default()
	b.ReportAllocs()
	b.SetBytes(int64(len(a.Text)))
	for b.Loop() {
		v.Score(in, a)
	}
}

func BenchmarkScoreLetter(b *testing.B) {
	in := prompt("Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC. Nitrogen\nD. Helium\nAnswer:")
	a := &Answer{Text: " B", Tokens: []Token{{Logprob: -0.7, Top: []float32{-0.7, -0.9, -3, -4}}}}
	v := Default()
	b.ReportAllocs()
	for b.Loop() {
		v.Score(in, a)
	}
}

func FuzzScore(f *testing.F) {
	f.Add("Q?\nA. x\nB. y\nAnswer:", " B", "stop", float32(-0.5))
	f.Add("Tom has 3 boxes of 12 eggs.", "3 * 12 = <<3*12=36>>36\n#### 36", "length", float32(-3))
	f.Add("Write code", "```python\ndef f(:\n", "", float32(0))
	f.Add("(((((", "= (((((((((((1 = 1e999 = -", "", float32(math.NaN()))
	f.Fuzz(func(t *testing.T, p, text, finish string, lp float32) {
		a := &Answer{Text: text, FinishReason: finish, Tokens: []Token{{Logprob: lp, Top: []float32{lp, lp * 2}}, {Blank: true}}}
		s := Default().Score(prompt(p), a)
		if !(s >= 0 && s <= 1) {
			t.Fatalf("score %v out of [0,1]", s)
		}
	})
}
