package router

import (
	"errors"
	"strings"
	"testing"

	"github.com/cascade-gateway/cascade/config"
)

func TestEstimateTokens(t *testing.T) {
	cases := []struct {
		text   string
		lo, hi int // plausible range of real tokenizers, template included
	}{
		{"", 4, 4},
		{"The quick brown fox jumps over the lazy dog.", 13, 17}, // 10 tokens + 4
		{strings.Repeat("The quick brown fox jumps over the lazy dog. ", 100), 1000, 1300},
		{strings.Repeat("こんにちは、元気ですか？", 100), 1000, 1400},                               // about one token a character
		{strings.Repeat("Привет, как дела? ", 100), 700, 1000},                          // Cyrillic: 2-3 letters a token
		{strings.Repeat("for (int i = 0; i < n; i++) { s += a[i]; }\n", 50), 600, 1000}, // code is dense
		{strings.Repeat("🙂", 100), 150, 300},
	}
	for _, c := range cases {
		n := EstimateTokens(user(c.text))
		if n < c.lo || n > c.hi {
			t.Errorf("EstimateTokens(%.30q…) = %d, want in [%d, %d]", c.text, n, c.lo, c.hi)
		}
	}
	two := &Input{Messages: []Message{{Role: "system", Content: "abcd"}, {Role: "user", Content: "abcd"}}}
	if n := EstimateTokens(two); n != 10 {
		t.Errorf("two messages: %d tokens, want 10", n)
	}
	big := user(strings.Repeat("a", 2<<20))
	if n := EstimateTokens(big); n < 400_000 {
		t.Errorf("2 MB prompt: %d tokens", n)
	}
	if a := testing.AllocsPerRun(10, func() { EstimateTokens(big) }); a != 0 {
		t.Errorf("EstimateTokens allocates %v times", a)
	}
}

func ctxPolicy(t testing.TB, c config.Routing, tiers ...config.Tier) *Policy {
	t.Helper()
	p, err := Compile(c, tiers, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.scorer = fixedScorer{}
	return p
}

// words is a prompt of about n tokens whose fixedScorer score is 0.
func words(n int) *Input {
	return &Input{Messages: []Message{{Role: "system", Content: ""}, {Role: "user", Content: strings.Repeat("word", n)}}}
}

func TestPolicyContext(t *testing.T) {
	tiers := []config.Tier{{Name: "small", MaxContextTokens: 8192}, {Name: "medium", MaxContextTokens: 32768}, {Name: "large", MaxContextTokens: 131072}}
	c := config.Routing{Threshold: 0.5, AllowTierHeader: true, Aliases: []config.Alias{{Name: "cheap", Mode: "never"}, {Name: "best", Mode: "always"}}}
	p := ctxPolicy(t, c, tiers...)
	cases := []struct {
		name, model, header string
		in                  *Input
		tier, reason        string
		overflow            bool
	}{
		{"fits small", "auto", "", words(1000), "small", "", false},
		{"too long for small", "auto", "", words(10000), "medium", ReasonContext, false},
		{"max_tokens counts", "auto", "", &Input{Messages: words(1000).Messages, MaxTokens: 8000}, "medium", ReasonContext, false},
		{"too long for medium", "auto", "", words(40000), "large", ReasonContext, false},
		{"never alias still fits", "cheap", "", words(10000), "medium", ReasonContext, false},
		{"score escalation kept", "auto", "", inputOf(0.9), "large", ReasonScore, false},
		{"always", "best", "", words(10000), "large", ReasonAlias, false},
		{"fits nothing", "auto", "", words(200000), "small", "", true},
		{"header pin that fits", "auto", "medium", words(10000), "medium", ReasonHeader, false},
		{"header pin too small", "auto", "small", words(10000), "small", "", true},
	}
	for _, tc := range cases {
		d, err := p.Route(tc.model, tc.header, tc.in)
		if tc.overflow != errors.Is(err, ErrContextLength) || (err != nil && !tc.overflow) {
			t.Errorf("%s: err %v, want overflow %v", tc.name, err, tc.overflow)
		}
		if d.Overflow != tc.overflow || d.Tier != tc.tier || d.Reason != tc.reason || d.Escalated != (tc.reason != "") {
			t.Errorf("%s: got %+v, want tier %s reason %q overflow %v", tc.name, d, tc.tier, tc.reason, tc.overflow)
		}
		if d.Tokens < EstimateTokens(tc.in) {
			t.Errorf("%s: Tokens %d below the prompt's estimate", tc.name, d.Tokens)
		}
		if dd := p.Decide(tc.in); tc.model == "auto" && tc.header == "" && (dd.Tier != tc.tier || dd.Overflow != tc.overflow) {
			t.Errorf("%s: Decide %+v", tc.name, dd)
		}
	}
	if _, err := p.Route("auto", "", words(200000)); err == nil || !strings.Contains(err.Error(), "131072") {
		t.Errorf("error does not name the largest context: %v", err)
	}
	if !p.Fits("small", words(1000)) || p.Fits("small", words(10000)) || !p.Fits("large", words(10000)) || !p.Fits("nope", words(1e6)) {
		t.Error("Fits")
	}
	if p.MaxContext() != 131072 {
		t.Errorf("MaxContext %d", p.MaxContext())
	}

	// A score escalation to a large tier with a smaller context than a
	// cheaper one lands on the closest cheaper tier that fits.
	q := ctxPolicy(t, config.Routing{Threshold: 0.5}, config.Tier{Name: "small", MaxContextTokens: 1000},
		config.Tier{Name: "long", MaxContextTokens: 1 << 20}, config.Tier{Name: "large", MaxContextTokens: 8000})
	long := &Input{Messages: []Message{{Role: "user", Content: strings.Repeat("x", 99) + strings.Repeat("é", 20000)}}}
	if d, err := q.Route("auto", "", long); err != nil || d.Tier != "long" || d.Reason != ReasonScore {
		t.Errorf("large too small: %+v %v", d, err)
	}

	// No declared context: nothing is estimated, everything fits.
	u := ctxPolicy(t, config.Routing{Threshold: 0.5}, config.Tier{Name: "small"}, config.Tier{Name: "large"})
	if d, err := u.Route("auto", "", words(1e6)); err != nil || d.Tier != "small" || d.Tokens != 0 || u.MaxContext() != 0 {
		t.Errorf("unlimited: %+v %v", d, err)
	}
	if _, err := Compile(config.Routing{}, []config.Tier{{Name: "a", MaxContextTokens: -1}}, nil); err == nil {
		t.Error("negative context accepted")
	}
}

// A 2 MB prompt never goes to the small tier, with the built-in scorer.
func TestHugePromptNotSmall(t *testing.T) {
	tiers := []config.Tier{{Name: "small", MaxContextTokens: 32768}, {Name: "large", MaxContextTokens: 131072}}
	p, err := Compile(config.Routing{Threshold: 0.75}, tiers, nil)
	if err != nil {
		t.Fatal(err)
	}
	in := user(strings.Repeat("Lorem ipsum dolor sit amet. ", 2<<20/28))
	d, err := p.Route("auto", "", in)
	if !errors.Is(err, ErrContextLength) || !d.Overflow {
		t.Fatalf("2 MB prompt: %+v, %v", d, err)
	}
	mid := user(strings.Repeat("Lorem ipsum dolor sit amet. ", 200_000/28)) // about 50k tokens
	if d, err := p.Route("auto", "", mid); err != nil || d.Tier != "large" {
		t.Fatalf("200 KB prompt: %+v, %v", d, err)
	}
	if a := testing.AllocsPerRun(20, func() { p.Route("auto", "", mid) }); a != 0 {
		t.Errorf("Route with context limits allocates %v times", a)
	}
}
