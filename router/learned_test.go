package router

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cascade-gateway/cascade/config"
)

func user(s string) *Input { return &Input{Messages: []Message{{Role: "user", Content: s}}} }

func dense(in *Input) Dense {
	var d Dense
	g := gramSink{weights: make([]float32, 1)}
	extract(in, &d, &g)
	return d
}

func TestFeaturesStructure(t *testing.T) {
	md := "Steps:\n- one\n- two\n* three\n1. four\n2) five\n\n```go\nfunc main() {}\n```\n| a | b |\n|---|---|\n| 1 | 2 |\n    indented code\n"
	d := dense(user(md))
	if got := d[fListItems]; got != log1p(5) {
		t.Errorf("list items = %v, want log1p(5)", got)
	}
	if got := d[fCodeFences]; got != log1p(2) {
		t.Errorf("code fences = %v, want log1p(2)", got)
	}
	if got := d[fTableLines]; got != log1p(3) {
		t.Errorf("table lines = %v, want log1p(3)", got)
	}
	if got := d[fIndentLines]; got != log1p(1) {
		t.Errorf("indented lines = %v, want log1p(1)", got)
	}
	if got := d[fBlankLines]; got != log1p(1) {
		t.Errorf("blank lines = %v, want log1p(1)", got)
	}
	mc := "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"
	if got := dense(user(mc))[fChoiceLines]; got != log1p(4) {
		t.Errorf("choice lines = %v, want log1p(4)", got)
	}
}

func TestFeaturesNumbersAndQuestions(t *testing.T) {
	d := dense(user("Is 3.14 more than 1,000? What about 1/2 and 42? Why?"))
	// 3.14, 1,000, 1, 2, 42: five numbers, one decimal, one fraction.
	if d[fNumbers] != log1p(5) || d[fDecimals] != log1p(1) || d[fFractions] != log1p(1) {
		t.Errorf("numbers %v decimals %v fractions %v", d[fNumbers], d[fDecimals], d[fFractions])
	}
	if d[fQuestions] != log1p(3) {
		t.Errorf("questions = %v, want log1p(3)", d[fQuestions])
	}
	if d[fMathOps] != log1p(1) { // the '/' of 1/2
		t.Errorf("math ops = %v", d[fMathOps])
	}
}

func TestFeaturesKeywordsCaseInsensitive(t *testing.T) {
	a := dense(user("The PLAINTIFF sued the Defendant for negligence under contract law."))
	b := dense(user("the plaintiff sued the defendant for negligence under contract law."))
	if a[fKwBase+catLaw] != log1p(5) || a[fKwBase+catLaw] != b[fKwBase+catLaw] {
		t.Errorf("law cues %v / %v, want log1p(5) both", a[fKwBase+catLaw], b[fKwBase+catLaw])
	}
	if a[fUpperShare] <= b[fUpperShare] {
		t.Error("upper-case share should differ")
	}
	m := dense(user("The patient shows symptoms of a chronic infection; the physician orders blood tests."))
	if m[fKwBase+catMedicine] != log1p(6) {
		t.Errorf("medicine cues = %v, want log1p(6)", m[fKwBase+catMedicine])
	}
	if m[fKwBase+catLaw] != 0 {
		t.Errorf("law cues in a medical prompt: %v", m[fKwBase+catLaw])
	}
	// n-grams ignore case too.
	var ha, hb []GramHit
	extract(user("Hello World again"), &Dense{}, &gramSink{mask: 4095, record: &ha})
	extract(user("hello world AGAIN"), &Dense{}, &gramSink{mask: 4095, record: &hb})
	if len(ha) != 5 || len(ha) != len(hb) { // 3 unigrams + 2 bigrams
		t.Fatalf("hits %d and %d, want 5", len(ha), len(hb))
	}
	for i := range ha {
		if ha[i].Bucket != hb[i].Bucket {
			t.Fatalf("hit %d: bucket %d vs %d", i, ha[i].Bucket, hb[i].Bucket)
		}
	}
}

func TestFeaturesConversationAndRequest(t *testing.T) {
	in := &Input{
		Messages: []Message{
			{Role: "system", Content: "You are a careful assistant."},
			{Role: "user", Content: "Hi"},
			{Role: "assistant", Content: "Hello! How can I help?"},
			{Role: "user", Content: "Summarise this."},
		},
		HasTools: true, HasResponseFormat: true, MaxTokens: 1024,
	}
	d := dense(in)
	if d[fMessages] != log1p(4) || d[fUserTurns] != log1p(2) || d[fHasSystem] != 1 {
		t.Errorf("messages %v user turns %v system %v", d[fMessages], d[fUserTurns], d[fHasSystem])
	}
	if d[fSystemLen] != log1p(28) {
		t.Errorf("system len = %v", d[fSystemLen])
	}
	if d[fHasTools] != 1 || d[fHasResponseFormat] != 1 || d[fMaxTokensSet] != 1 || d[fMaxTokens] != log1p(1024) {
		t.Errorf("request features: %v %v %v %v", d[fHasTools], d[fHasResponseFormat], d[fMaxTokensSet], d[fMaxTokens])
	}
	// Roles are weighted: the same text counts less from the assistant.
	u := dense(&Input{Messages: []Message{{Role: "user", Content: "why why why"}}})
	a := dense(&Input{Messages: []Message{{Role: "assistant", Content: "why why why"}}})
	if !(a[fKwBase+catReasoning] < u[fKwBase+catReasoning]) || a[fLenBytes] >= u[fLenBytes] {
		t.Errorf("assistant text weighs as much as user text: %v vs %v", a[fKwBase+catReasoning], u[fKwBase+catReasoning])
	}
}

// Other scripts count like English: letters per character, words by spaces
// or, in scripts without them, about two characters a word; full-width and
// script punctuation ends sentences and asks questions.
func TestFeaturesNonASCII(t *testing.T) {
	en := dense(user("What is the boiling point of water?"))
	for _, tc := range []struct {
		text  string
		words float32
	}{
		{"水の沸点は何度ですか？", 5},
		{"Какова температура кипения воды?", 4},
		{"ما هي درجة غليان الماء؟", 5},
		{"पानी का क्वथनांक क्या है?", 5},
	} {
		d := dense(user(tc.text))
		if d[fQuestions] != en[fQuestions] || d[fSentences] != en[fSentences] {
			t.Errorf("%s: questions %v sentences %v, want %v %v", tc.text, d[fQuestions], d[fSentences], en[fQuestions], en[fSentences])
		}
		if d[fLenWords] != log1p(tc.words) {
			t.Errorf("%s: words %v, want %v", tc.text, expm1(d[fLenWords]), tc.words)
		}
		if d[fAvgWordLen] > 8 {
			t.Errorf("%s: mean word length %v", tc.text, d[fAvgWordLen])
		}
		// Characters; those of scripts without spaces weigh about three.
		if l := expm1(d[fLenBytes]); l > 3*float32(len([]rune(tc.text))) || l < float32(len([]rune(tc.text)))-0.01 {
			t.Errorf("%s: length %v for %d characters", tc.text, l, len([]rune(tc.text)))
		}
	}
	// Upper case, entities and emphasis in scripts with case.
	ru := dense(user("Иван дал Марии 3 яблока, а Пётр дал ей 5. СКОЛЬКО НЕ хватает?"))
	if ru[fUpperShare] == 0 || ru[fEntities] != log1p(2) || ru[fCapsEmphasis] != 0 {
		t.Errorf("Russian: upper %v entities %v caps %v", ru[fUpperShare], expm1(ru[fEntities]), ru[fCapsEmphasis])
	}
	// Mathematical symbols are operators; emoji count for nothing.
	if d := dense(user("∫ x² dx ≤ √2 × π")); d[fMathOps] < log1p(4) {
		t.Errorf("math symbols: %v", expm1(d[fMathOps]))
	}
	plain, emoji := dense(user("hi")), dense(user("hi🙂🙂"))
	for j := range plain {
		if plain[j] != emoji[j] {
			t.Errorf("emoji changes %s: %v -> %v", denseNames[j], plain[j], emoji[j])
		}
	}
	// Greetings are chat in any language.
	for _, g := range []string{"привет", "こんにちは", "你好", "Hola", "नमस्ते", "مرحبا"} {
		if dense(user(g))[fKwBase+catChat] == 0 {
			t.Errorf("%s is not chat", g)
		}
	}
}

func expm1(x float32) float32 { return float32(math.Expm1(float64(x))) }

func TestScoreRangeAndNoAllocs(t *testing.T) {
	m := DefaultModel()
	inputs := []*Input{
		{},
		user(""),
		user("hi"),
		user(strings.Repeat("Prove the theorem step by step. ", 500)),
		{Messages: []Message{{Role: "system", Content: "x"}, {Role: "tool", Content: "{}"}}, HasTools: true, MaxTokens: 1 << 30},
	}
	for _, in := range inputs {
		s := m.Score(in)
		if !(s >= 0 && s <= 1) {
			t.Fatalf("score %v out of [0,1]", s)
		}
		if n := testing.AllocsPerRun(50, func() { m.Score(in) }); n != 0 {
			t.Fatalf("Score allocates %v times per call", n)
		}
	}
}

func TestScoreHugeInputIsBounded(t *testing.T) {
	// 8 MiB: only the first maxScan bytes are scanned, length still counts.
	big := strings.Repeat("a", 8<<20)
	d := dense(user(big))
	if d[fLenBytes] != log1p(float32(len(big))) {
		t.Errorf("length feature ignores bytes past the scan bound")
	}
	var hits []GramHit
	extract(user(strings.Repeat("word ", 1<<20)), &Dense{}, &gramSink{mask: 1, record: &hits})
	if len(hits) > maxScan {
		t.Errorf("%d n-grams from a bounded scan", len(hits))
	}
}

func TestModelRoundTrip(t *testing.T) {
	m := DefaultModel()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	m2, err := LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"hi", "Explain why the sky is blue, step by step.", "What is 17*23?\nA. 391\nB. 401"} {
		if a, b := m.Score(user(s)), m2.Score(user(s)); a != b {
			t.Errorf("%q: %v before, %v after round trip", s, a, b)
		}
	}
	b2, _ := m2.Marshal()
	if !bytes.Equal(b, b2) {
		t.Error("re-marshalled model differs")
	}
}

func TestLoadModelRejectsBadFiles(t *testing.T) {
	good, _ := DefaultModel().Marshal()
	var f map[string]any
	json.Unmarshal(good, &f)
	mutate := func(fn func(map[string]any)) []byte {
		var c map[string]any
		json.Unmarshal(good, &c)
		fn(c)
		b, _ := json.Marshal(c)
		return b
	}
	cases := map[string][]byte{
		"not json":      []byte("{"),
		"format":        mutate(func(c map[string]any) { c["format"] = "other/1" }),
		"feature names": mutate(func(c map[string]any) { c["features"].([]any)[0] = "bogus" }),
		"short weights": mutate(func(c map[string]any) { c["weights"] = c["weights"].([]any)[:3] }),
		"zero scale":    mutate(func(c map[string]any) { c["scale"].([]any)[1] = 0.0 }),
		"grams length":  mutate(func(c map[string]any) { c["grams"] = []float64{1, 2, 3} }),
		"gram bits":     mutate(func(c map[string]any) { c["gram_bits"] = 40 }),
		"percentiles n": mutate(func(c map[string]any) { c["percentiles"] = []float64{1, 2} }),
		"percentiles order": mutate(func(c map[string]any) {
			p := c["percentiles"].([]any)
			p[0], p[98] = p[98], p[0]
		}),
	}
	for name, b := range cases {
		if _, err := ParseModel(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := LoadModel(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestNewScorer(t *testing.T) {
	s, err := NewScorer(config.Routing{Scorer: "length"})
	if _, ok := s.(LengthScorer); !ok || err != nil {
		t.Errorf("length: %T %v", s, err)
	}
	s, err = NewScorer(config.Routing{})
	if s != Scorer(DefaultModel()) || err != nil {
		t.Errorf("default: %T %v", s, err)
	}
	path := filepath.Join(t.TempDir(), "m.json")
	if err := DefaultModel().Save(path); err != nil {
		t.Fatal(err)
	}
	s, err = NewScorer(config.Routing{Scorer: "learned", ModelFile: path})
	if l, ok := s.(*Learned); !ok || err != nil || l == DefaultModel() {
		t.Errorf("model file: %T %v", s, err)
	}
	if _, err := NewScorer(config.Routing{ModelFile: path + ".missing"}); err == nil {
		t.Error("missing model file accepted")
	}
	if _, err := NewScorer(config.Routing{Scorer: "magic"}); err == nil {
		t.Error("unknown scorer accepted")
	}
}

func TestExplainAddsUpToScore(t *testing.T) {
	m := DefaultModel()
	for _, s := range []string{
		"Janet has 3 apples and buys 12 more at $0.50 each. How much did she spend in total?",
		"For which of these two scenarios does the main character do something clearly morally wrong?\nA. Wrong, Wrong\nB. Not wrong, Wrong",
	} {
		in := user(s)
		all := m.Explain(in, 1<<20)
		z := float64(m.file.Bias)
		for _, r := range all {
			z += r.Contribution
		}
		if got, want := m.fromLogit(z), m.Score(in); math.Abs(got-want) > 1e-4 {
			t.Errorf("%q: reasons add up to %v, score %v", s, got, want)
		}
		top := m.Explain(in, 3)
		if len(top) != 3 {
			t.Fatalf("top 3: %+v", top)
		}
		for i := 1; i < len(top); i++ {
			if math.Abs(top[i].Contribution) > math.Abs(top[i-1].Contribution) {
				t.Errorf("reasons not ordered by magnitude: %+v", top)
			}
		}
		if math.Abs(top[0].Contribution) < math.Abs(all[0].Contribution)-1e-12 {
			t.Errorf("top reason %+v is not the largest %+v", top[0], all[0])
		}
	}
	if r := m.Explain(user("x"), 0); r != nil {
		t.Errorf("k=0 gives %v", r)
	}
}

// dataFiles is the labelled routing data kept with the tests (a copy of the
// data the built-in model was trained on; see testdata/routing/README.md).
func dataFiles(t *testing.T) []string {
	t.Helper()
	dir := filepath.Join("testdata", "routing")
	var files []string
	for _, n := range []string{"gsm8k", "mmlu", "routerbench_arc_challenge", "routerbench_mbpp", "routerbench_winogrande"} {
		files = append(files, filepath.Join(dir, n+".jsonl"))
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("routing data missing in CI: %v", err)
			}
			t.Skipf("routing data not found: %v", err)
		}
	}
	return files
}

// The built-in model must beat ordering by length on the validation half it
// was not trained on, for every source, and rank the mixed pool (an equal
// share of each set) better than knowing each set's mean gain in hindsight.
func TestDefaultModelBeatsLengthOnValidation(t *testing.T) {
	ex, err := LoadExamples(dataFiles(t)...)
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Seed int64 `json:"seed"`
	}
	if err := json.Unmarshal(DefaultModel().Meta(), &meta); err != nil {
		t.Fatal(err)
	}
	_, val := Split(ex, meta.Seed)
	names, groups := BySource(val)
	if len(names) != 5 {
		t.Fatalf("sources %v", names)
	}
	for _, src := range names {
		g := groups[src]
		w, s := Outcomes(g)
		ours := Evaluate(ScoreAll(DefaultModel(), g), w, s)
		length := Evaluate(ScoreAll(LengthScorer{Saturation: math.MaxInt}, g), w, s)
		t.Logf("%s: n=%d learned APGR %.3f CPT50 %.3f CPT80 %.3f; length APGR %.3f", src, len(g), ours.APGR, ours.CPT50, ours.CPT80, length.APGR)
		if ours.APGR <= length.APGR {
			t.Errorf("%s: learned APGR %.3f does not beat length %.3f", src, ours.APGR, length.APGR)
		}
		if (src == "gsm8k" || src == "mmlu") && ours.APGR <= 0.58 {
			t.Errorf("%s: learned APGR %.3f", src, ours.APGR)
		}
	}
	mixed := EvaluateMixed(val, ScoreAll(DefaultModel(), val))
	prior := EvaluateMixed(val, SourcePrior(val))
	t.Logf("mixed: learned APGR %.3f CPT50 %.3f CPT80 %.3f; source prior in hindsight %.3f", mixed.APGR, mixed.CPT50, mixed.CPT80, prior.APGR)
	if mixed.APGR < 0.60 || mixed.APGR <= prior.APGR {
		t.Errorf("mixed pool: APGR %.3f, prior %.3f", mixed.APGR, prior.APGR)
	}
}

func TestSplitIsByPrompt(t *testing.T) {
	ex := []Example{{Prompt: "a"}, {Prompt: "b"}, {Prompt: "a"}, {Prompt: "c"}}
	for seed := int64(0); seed < 20; seed++ {
		tr, va := Split(ex, seed)
		if len(tr)+len(va) != 4 {
			t.Fatal("rows lost")
		}
		if IsValidation("a", seed) {
			n := 0
			for _, e := range va {
				if e.Prompt == "a" {
					n++
				}
			}
			if n != 2 {
				t.Fatalf("seed %d: duplicate prompt split across halves", seed)
			}
		}
	}
}

func syntheticExamples(n int) []Example {
	words := []string{"why", "prove", "total", "hi", "patient", "court", "energy", "each", "then", "list"}
	ex := make([]Example, n)
	for i := range ex {
		var b strings.Builder
		h := uint64(i)*2654435761 + 7
		k := 3 + int(h%20)
		for j := 0; j < k; j++ {
			h = h*6364136223846793005 + 1442695040888963407
			b.WriteString(words[(h>>33)%uint64(len(words))])
			b.WriteByte(' ')
		}
		hard := strings.Contains(b.String(), "prove") || k > 15
		ex[i] = Example{ID: "x", Source: []string{"a", "b"}[i%2], Domain: "d", Prompt: b.String(), Weak: 1, Strong: 1}
		if hard {
			ex[i].Weak = 0
		}
	}
	return ex
}

func TestTrainIsDeterministicAndLearns(t *testing.T) {
	ex := syntheticExamples(400)
	a, err := Train(ex, TrainOptions{Seed: 3, Iters: 150, GramBits: 12})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Train(ex, TrainOptions{Seed: 3, Iters: 150, GramBits: 12})
	ja, _ := a.Marshal()
	jb, _ := b.Marshal()
	if !bytes.Equal(ja, jb) {
		t.Fatal("same data and seed gave different models")
	}
	c, _ := Train(ex, TrainOptions{Seed: 4, Iters: 150, GramBits: 12})
	if jc, _ := c.Marshal(); bytes.Equal(ja, jc) {
		t.Error("a different seed changed nothing (topic folds should differ)")
	}
	w, s := Outcomes(ex)
	oracle := Evaluate(OracleScores(w, s), w, s)
	if m := Evaluate(ScoreAll(a, ex), w, s); m.APGR < 0.9*oracle.APGR {
		t.Errorf("model did not learn the synthetic rule: APGR %.3f, oracle %.3f", m.APGR, oracle.APGR)
	}
	if _, err := Train(nil, TrainOptions{}); err == nil {
		t.Error("empty training set accepted")
	}
	if _, err := Train(ex, TrainOptions{Label: "nope"}); err == nil {
		t.Error("unknown label accepted")
	}
}

func TestLoadExamples(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d.jsonl")
	os.WriteFile(p, []byte(`{"id":"1","source":"s","domain":"d","prompt":"p","weak":1,"strong":0}`+"\n\n"+`{"id":"2","prompt":"q","weak":0,"strong":1}`+"\n"), 0o644)
	ex, err := LoadExamples(p)
	if err != nil || len(ex) != 2 || ex[1].Source != "unknown" || ex[0].Weak != 1 {
		t.Fatalf("%+v %v", ex, err)
	}
	os.WriteFile(p, []byte(`{"prompt":"p","weak":2,"strong":0}`), 0o644)
	if _, err := LoadExamples(p); err == nil {
		t.Error("weak=2 accepted")
	}
}

func TestPercentileScale(t *testing.T) {
	m := DefaultModel()
	q := m.file.Percentiles
	if len(q) != 99 {
		t.Fatalf("built-in model has %d percentiles", len(q))
	}
	// At the knots the score is the percentile; between and beyond them it
	// increases strictly and stays within (0, 1).
	for k := range q {
		if k > 0 && q[k] == q[k-1] {
			continue
		}
		if got := m.fromLogit(float64(q[k])); math.Abs(got-float64(k+1)/100) > 1e-9 {
			t.Fatalf("percentile %d: score %v", k+1, got)
		}
	}
	prev := -1.0
	lo, hi := float64(q[0]), float64(q[98])
	for z := lo - 3*(hi-lo); z <= hi+3*(hi-lo); z += (hi - lo) / 1000 {
		s := m.fromLogit(z)
		if !(s > prev) || s <= 0 || s >= 1 {
			t.Fatalf("score %v at logit %v after %v", s, z, prev)
		}
		prev = s
	}
	if s := m.fromLogit(math.NaN()); s != 0.5 {
		t.Errorf("NaN logit scores %v", s)
	}
	// Without percentiles the score is the sigmoid of the logit.
	raw := &Learned{}
	if s := raw.fromLogit(0.3); s != sigmoid(0.3) {
		t.Errorf("no percentiles: %v", s)
	}
}

// On the validation half about 1−t of prompts score at or above t.
func TestPercentileScaleOnValidation(t *testing.T) {
	ex, err := LoadExamples(dataFiles(t)...)
	if err != nil {
		t.Fatal(err)
	}
	_, val := Split(ex, 1)
	scores := ScoreAll(DefaultModel(), val)
	for _, th := range []float64{0.5, 0.75, 0.9} {
		n := 0
		for _, s := range scores {
			if s >= th {
				n++
			}
		}
		if share := float64(n) / float64(len(scores)); math.Abs(share-(1-th)) > 0.05 {
			t.Errorf("threshold %v escalates %.3f of validation prompts, want about %.2f", th, share, 1-th)
		}
	}
}

// In data where a difficulty cue goes with easy prompts (as decimals did in
// the routing data), the unconstrained fit learns a negative weight and the
// constrained one keeps it at zero or above; chit-chat cues never go up.
func TestSignConstraints(t *testing.T) {
	ex := make([]Example, 300)
	for i := range ex {
		p := fmt.Sprintf("item %d costs some coins and we count them", i)
		ex[i] = Example{Source: "s", Prompt: p, Weak: 0, Strong: 1}
		if i%2 == 0 { // easy prompts carry a decimal and a greeting
			ex[i].Prompt = fmt.Sprintf("hello item %d.5 costs some coins and we calculate them", i)
			ex[i].Weak = 1
		}
	}
	opt := TrainOptions{Seed: 1, Iters: 200, GramBits: -1}
	c, err := Train(ex, opt)
	if err != nil {
		t.Fatal(err)
	}
	opt.Unconstrained = true
	u, _ := Train(ex, opt)
	if w, m := u.file.Weights[fDecimals], u.file.Weights[fKwBase+catMath]; w >= 0 || m >= 0 {
		t.Fatalf("unconstrained decimals and math-cue weights %v, %v; want < 0 on this data", w, m)
	}
	signs := FeatureSigns()
	for j, w := range c.file.Weights {
		if (signs[j] > 0 && w < 0) || (signs[j] < 0 && w > 0) {
			t.Errorf("%s: weight %v breaks its sign %d", DenseNames()[j], w, signs[j])
		}
	}
	if signs[fDecimals] != 1 || signs[fKwBase+catChat] != -1 || signs[fAvgWordLen] != 0 {
		t.Error("unexpected sign table")
	}
	// Prior cues keep their floor even where the data pulls them down.
	if w := c.file.Weights[fKwBase+catMath]; math.Abs(float64(w)-DefaultFloor) > 1e-4 {
		t.Errorf("math-cue weight %v, want the floor %v", w, DefaultFloor)
	}
	for _, j := range priorCues {
		if w := c.file.Weights[j]; c.file.Scale[j] != 1 && w < float32(DefaultFloor)*0.999 {
			t.Errorf("%s: weight %v below the floor %v", DenseNames()[j], w, DefaultFloor)
		}
	}
	opt.Unconstrained, opt.Floor = false, -1
	n, _ := Train(ex, opt)
	for j, w := range n.file.Weights {
		if signs[j] > 0 && w < 0 {
			t.Errorf("%s: weight %v < 0 without a floor", DenseNames()[j], w)
		}
	}
}

func TestFeaturesQuantitiesAndChoices(t *testing.T) {
	d := dense(user("Tom has 3 apples and 3 pears. He buys 5 more. How many now? Which is NOT true?"))
	if d[fDistinctNumbers] != log1p(2) || d[fNumberSentences] != log1p(2) {
		t.Errorf("distinct numbers %v, number sentences %v; want log1p(2) each", d[fDistinctNumbers], d[fNumberSentences])
	}
	if d[fStepLoad] != d[fDistinctNumbers]*d[fNumberSentences] || d[fWordProblem] != d[fStepLoad] || d[fChoiceDigits] != 0 {
		t.Errorf("step load %v, word problem %v, choice digits %v", d[fStepLoad], d[fWordProblem], d[fChoiceDigits])
	}
	if d[fCapsEmphasis] != log1p(1) {
		t.Errorf("caps emphasis %v, want log1p(1)", d[fCapsEmphasis])
	}
	mc := dense(user("Pick one of 12 and 14.\nI. first\nII. second\nA. yes\nB. no way\nAnswer:"))
	if mc[fStemLen] != log1p(float32(len("Pick one of 12 and 14.\nI. first\nII. second\n"))) {
		t.Errorf("stem length %v", mc[fStemLen])
	}
	if mc[fOptionLen] != log1p(float32(len("A. yes")+len("B. no way"))/2) || mc[fRomanLines] != log1p(2) {
		t.Errorf("option length %v, roman lines %v", mc[fOptionLen], mc[fRomanLines])
	}
	if mc[fWordProblem] != 0 || mc[fChoiceDigits] != mc[fDigitShare] {
		t.Errorf("multiple choice: word problem %v, choice digits %v", mc[fWordProblem], mc[fChoiceDigits])
	}
}

func TestFeaturesEntitiesPartsAndDigits(t *testing.T) {
	d := dense(user("Maria gives Tom 12,500 coins, Tom gives Ann 7. Then Maria, Tom and Ann count."))
	// Maria, Tom, Ann inside sentences ("Then" and the first "Maria" open one);
	// the comma inside 12,500 is part of the number: 2 commas, 2 sentences.
	if d[fEntities] != log1p(3) || d[fClauses] != log1p(4) || d[fMaxDigits] != log1p(5) {
		t.Errorf("entities %v, clauses %v, max digits %v", d[fEntities], d[fClauses], d[fMaxDigits])
	}
	mc := dense(user("Statement 1 | Every group is abelian. Statement 2 | Maria agrees.\nA. True, True\nB. False, False"))
	if mc[fParts] != log1p(2) {
		t.Errorf("numbered parts %v, want log1p(2)", mc[fParts])
	}
	if mc[fEntities] != 0 || mc[fClauses] != 0 || mc[fMaxDigits] != 0 {
		t.Errorf("free-text features in a multiple-choice prompt: %v %v %v", mc[fEntities], mc[fClauses], mc[fMaxDigits])
	}
}
