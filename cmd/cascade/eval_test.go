package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cascade-gateway/cascade/router"
)

// writeLabelled writes a small labelled set whose hard prompts are the long,
// number-heavy ones.
func writeLabelled(t *testing.T, path string) {
	t.Helper()
	var b bytes.Buffer
	for i := 0; i < 240; i++ {
		src := []string{"alpha", "beta"}[i%2]
		n := 1 + i%7
		p := strings.Repeat(fmt.Sprintf("Tom has %d apples and buys %d more each day. ", i, n), n)
		weak := 1
		if n >= 5 {
			weak = 0
		}
		line, _ := json.Marshal(map[string]any{"id": fmt.Sprint(i), "source": src, "domain": "d", "prompt": p, "weak": weak, "strong": 1})
		b.Write(append(line, '\n'))
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestTrainAndEvalCommands(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "d.jsonl")
	writeLabelled(t, data)
	m1, m2 := filepath.Join(dir, "m1.json"), filepath.Join(dir, "m2.json")
	for _, out := range []string{m1, m2} {
		if err := runTrain([]string{"--data", data, "--out", out, "--seed", "3", "--iters", "100"}); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := os.ReadFile(m1)
	b, _ := os.ReadFile(m2)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatal("two trainings with the same data and seed wrote different models")
	}
	m, err := router.LoadModel(m1)
	if err != nil {
		t.Fatal(err)
	}
	ex, _ := router.LoadExamples(data)
	_, val := router.Split(ex, 3)
	var out, progress bytes.Buffer
	plot := filepath.Join(dir, "p.svg")
	if err := evaluate(&out, &progress, m, val, "validation", plot); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	for _, want := range []string{"alpha", "beta", "learned", "length", "random", "oracle", "APGR", "CPT50", "CPT80", "mixed      learned", "mixed      prior"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	svg, err := os.ReadFile(plot)
	if err != nil || !bytes.Contains(svg, []byte("<svg")) || !bytes.Contains(svg, []byte("oracle")) {
		t.Errorf("plot: %v %.80s", err, svg)
	}
	if err := runEval([]string{"--data", data, "--model", filepath.Join(dir, "missing.json")}); err == nil {
		t.Error("eval with a missing model succeeded")
	}
	if err := runTrain([]string{"--out", m1}); err == nil {
		t.Error("train without --data succeeded")
	}
}
