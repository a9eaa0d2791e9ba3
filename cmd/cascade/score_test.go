package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/router"
)

func defaultPolicy(t testing.TB) *router.Policy {
	p, err := scorePolicy("")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type scoredLine struct {
	ID      any             `json:"id"`
	Score   *float64        `json:"score"`
	Tier    string          `json:"tier"`
	Reasons []router.Reason `json:"reasons"`
	Error   string          `json:"error"`
}

func readScored(t *testing.T, out []byte) []scoredLine {
	t.Helper()
	var res []scoredLine
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var l scoredLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("output line %q: %v", sc.Text(), err)
		}
		res = append(res, l)
	}
	return res
}

func TestScoreStreamOrderAndFormat(t *testing.T) {
	var in strings.Builder
	const n = 1500 // several batches
	for i := 0; i < n; i++ {
		switch i % 3 {
		case 0:
			fmt.Fprintf(&in, `{"id":%d,"prompt":"What is %d plus %d?"}`+"\n", i, i, i)
		case 1:
			fmt.Fprintf(&in, `{"id":"s%d","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Prove that there are infinitely many primes, step by step. Case %d."}]}],"max_tokens":500}`+"\n", i, i)
		case 2:
			fmt.Fprintf(&in, `{"id":%d,"prompt":"hi"}`+"\n\n", i) // blank lines are skipped
		}
	}
	in.WriteString(`{"id":"bad","nothing":1}` + "\n")
	in.WriteString(`not json` + "\n")
	in.WriteString(`{"id":"last","prompt":"no trailing newline"}`)
	var out bytes.Buffer
	if err := scoreStream(strings.NewReader(in.String()), &out, defaultPolicy(t), 3); err != nil {
		t.Fatal(err)
	}
	res := readScored(t, out.Bytes())
	if len(res) != n+3 {
		t.Fatalf("got %d lines, want %d", len(res), n+3)
	}
	for i := 0; i < n; i++ {
		l := res[i]
		want := any(float64(i))
		if i%3 == 1 {
			want = fmt.Sprintf("s%d", i)
		}
		if l.ID != want {
			t.Fatalf("line %d has id %v, want %v", i, l.ID, want)
		}
		if l.Score == nil || *l.Score < 0 || *l.Score > 1 {
			t.Fatalf("line %d: score %v", i, l.Score)
		}
		wantTier := "small"
		if *l.Score >= config.Default().Routing.Threshold {
			wantTier = "large"
		}
		if l.Tier != wantTier {
			t.Fatalf("line %d: tier %q for score %v", i, l.Tier, *l.Score)
		}
		if len(l.Reasons) == 0 || len(l.Reasons) > 3 || l.Reasons[0].Feature == "" {
			t.Fatalf("line %d: reasons %+v", i, l.Reasons)
		}
	}
	if res[n].ID != "bad" || res[n].Error == "" || res[n].Score != nil {
		t.Errorf("line without prompt: %+v", res[n])
	}
	if res[n+1].ID != nil || !strings.Contains(res[n+1].Error, "invalid JSON") {
		t.Errorf("invalid line: %+v", res[n+1])
	}
	if res[n+2].ID != "last" || res[n+2].Score == nil {
		t.Errorf("last line: %+v", res[n+2])
	}
	// The same prompt scores the same whichever form it came in.
	var a, b bytes.Buffer
	scoreStream(strings.NewReader(`{"id":1,"prompt":"Explain quantum tunnelling."}`), &a, defaultPolicy(t), 0)
	scoreStream(strings.NewReader(`{"id":1,"messages":[{"role":"user","content":"Explain quantum tunnelling."}]}`), &b, defaultPolicy(t), 0)
	if a.String() != b.String() {
		t.Errorf("prompt form %s != messages form %s", a.String(), b.String())
	}
	if strings.Contains(a.String(), "reasons") {
		t.Errorf("--reasons 0 still lists reasons: %s", a.String())
	}
}

func TestScoreWithConfigTiersAndThreshold(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(`
tiers:
  - name: cheap
    endpoints: [{url: "http://127.0.0.1:9/v1", model: m1}]
  - name: pricey
    endpoints: [{url: "http://127.0.0.1:9/v1", model: m2}]
routing:
  threshold: 0.0001
`), 0o644)
	p, err := scorePolicy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := scoreStream(strings.NewReader(`{"id":7,"prompt":"hello"}`+"\n"), &out, p, 1); err != nil {
		t.Fatal(err)
	}
	res := readScored(t, out.Bytes())
	if len(res) != 1 || res[0].Tier != "pricey" {
		t.Fatalf("got %+v, want tier pricey at threshold 0.0001", res)
	}
}

func BenchmarkScoreStream(b *testing.B) {
	var in bytes.Buffer
	prompts := []string{
		"What is the capital of France?",
		"Janet has 3 apples and buys 12 more at $0.50 each. She gives a third to her friend. How many are left, and how much did she spend?",
		strings.Repeat("Explain the legal doctrine of promissory estoppel and compare it with consideration in contract law. ", 8),
	}
	const lines = 3000
	for i := 0; i < lines; i++ {
		p, _ := json.Marshal(prompts[i%len(prompts)])
		fmt.Fprintf(&in, `{"id":%d,"prompt":%s}`+"\n", i, p)
	}
	p := defaultPolicy(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := scoreStream(bytes.NewReader(in.Bytes()), &bytes.Buffer{}, p, 3); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*lines)/b.Elapsed().Seconds(), "prompts/s")
}
