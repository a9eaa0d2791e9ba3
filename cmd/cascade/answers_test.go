package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/cascade-gateway/cascade/router/verify"
)

func TestScoreAnswers(t *testing.T) {
	in := strings.Join([]string{
		`{"id": "sure", "prompt": "Q?\nA. x\nB. y\nC. z\nD. w\nAnswer:", "small": {"text": " A", "top_logprobs": [{"token": " A", "logprob": -0.001}, {"token": " B", "logprob": -7}]}}`,
		`{"id": 2, "prompt": "Q?\nA. x\nB. y\nC. z\nD. w\nAnswer:", "small": {"text": " A", "top_logprobs": [{"token": " A", "logprob": -1.1}, {"token": " B", "logprob": -1.2}, {"token": " C", "logprob": -1.4}]}}`,
		`{"id": "no answer", "prompt": "x"}`,
		`not json`,
	}, "\n")
	var out bytes.Buffer
	if err := scoreAnswers(strings.NewReader(in), &out, verify.Default(), 0.5, 2); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4:\n%s", len(lines), out.String())
	}
	var got []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got = append(got, m)
	}
	if got[0]["id"] != "sure" || got[1]["id"] != float64(2) {
		t.Fatalf("ids out of order: %v", got)
	}
	if !(got[1]["score"].(float64) > got[0]["score"].(float64)) {
		t.Fatalf("unsure answer scored %v, sure %v", got[1]["score"], got[0]["score"])
	}
	if got[0]["tier"] != "small" || len(got[1]["reasons"].([]any)) == 0 {
		t.Fatalf("got %v", got[:2])
	}
	if got[2]["error"] == nil || got[3]["error"] == nil {
		t.Fatalf("bad lines should report errors: %v", got[2:])
	}
}

func TestHasAnswers(t *testing.T) {
	for args, want := range map[string]bool{
		"--answers a.jsonl": true, "-answers=a": true, "--answers": true,
		"--data a.jsonl": false, "-- --answers": false, "--answersx": false,
	} {
		if got := hasAnswers(strings.Fields(args)); got != want {
			t.Errorf("hasAnswers(%q) = %v, want %v", args, got, want)
		}
	}
}
