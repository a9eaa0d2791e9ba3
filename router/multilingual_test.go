package router

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"

	"github.com/cascade-gateway/cascade/config"
)

// TestMultilingual: short, easy prompts (greetings, thanks, a simple
// question; with and without emoji) in English, Japanese, Chinese, Russian,
// Arabic, Hindi and Spanish stay below the default threshold and score close
// to their English counterparts; the hard prompts of each language (a
// multi-step rate problem, a coding task) score above all of its easy ones.
func TestMultilingual(t *testing.T) {
	f, err := os.Open("testdata/multilingual.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type row struct{ Lang, Kind, En, Prompt string }
	var rows []row
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r row
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	m := DefaultModel()
	threshold := config.Default().Routing.Threshold
	score := func(s string) float64 { return m.Score(user(s)) }
	maxEasy, minHard := map[string]float64{}, map[string]float64{}
	for _, r := range rows {
		s := score(r.Prompt)
		t.Logf("%s %s %.3f (English %.3f) %.40q", r.Lang, r.Kind, s, score(r.En), r.Prompt)
		switch r.Kind {
		case "easy":
			if s >= threshold {
				t.Errorf("%s: easy prompt %q scores %.3f, at or above the threshold %.2f", r.Lang, r.Prompt, s, threshold)
			}
			if d := s - score(r.En); d > 0.1 || d < -0.1 {
				t.Errorf("%s: %q scores %.3f, its English counterpart %q %.3f", r.Lang, r.Prompt, s, r.En, score(r.En))
			}
			maxEasy[r.Lang] = max(maxEasy[r.Lang], s)
		case "hard":
			if v, ok := minHard[r.Lang]; !ok || s < v {
				minHard[r.Lang] = s
			}
		}
	}
	if len(maxEasy) != 7 {
		t.Fatalf("languages %v", maxEasy)
	}
	for lang, e := range maxEasy {
		if h := minHard[lang]; h <= e {
			t.Errorf("%s: a hard prompt scores %.3f, an easy one %.3f", lang, h, e)
		}
	}
}
