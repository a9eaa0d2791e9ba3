package backends

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestStreamScannerLineReady(t *testing.T) {
	// Two events in one read, then a partial line: the relay may hold the
	// first event back only while a whole next line is already there.
	pr, pw := io.Pipe()
	sc := NewStreamScanner(pr)
	go pw.Write([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choi"))
	line, err := sc.Next()
	if err != nil || !bytes.HasPrefix(line, []byte("data: {")) {
		t.Fatalf("first line %q %v", line, err)
	}
	if !sc.LineReady() { // the blank line is buffered
		t.Fatal("a buffered blank line is not ready")
	}
	if line, _ = sc.Next(); string(line) != "\n" {
		t.Fatalf("blank line %q", line)
	}
	if sc.LineReady() { // only a partial line is buffered
		t.Fatal("a partial line counted as ready")
	}
	if sc.Chunks != 1 {
		t.Fatalf("chunks %d", sc.Chunks)
	}
	pw.Close()
}

func TestStreamScannerKeepsNoView(t *testing.T) {
	// finish reason and model are kept after the reader's buffer is reused.
	ev := "data: {\"model\":\"m-1\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n" +
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\n\n"
	filler := strings.Repeat("data: {\"choices\":[{\"delta\":{\"content\":\"zzzzzzzz\"}}]}\n\n", 2000)
	sc := NewStreamScanner(strings.NewReader(ev + filler + "data: [DONE]\n\n"))
	usageOnly := 0
	for {
		_, err := sc.Next()
		if sc.UsageOnly {
			usageOnly++
		}
		if err != nil {
			break
		}
	}
	u := sc.Usage
	if u.ResponseModel != "m-1" || u.FinishReason != "stop" || !u.Reported || u.InputTokens != 3 || u.OutputTokens != 5 || !sc.Done || usageOnly != 1 {
		t.Fatalf("usage %+v done %v usage-only %d", u, sc.Done, usageOnly)
	}
	if sc.Chunks != 2001 {
		t.Fatalf("chunks %d", sc.Chunks)
	}
}

func TestStreamScannerInspectAllocs(t *testing.T) {
	chunk := []byte(`{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}`)
	sc := NewStreamScanner(strings.NewReader(""))
	sc.inspect(chunk) // keeps the model once
	if n := testing.AllocsPerRun(100, func() { sc.inspect(chunk) }); n != 0 {
		t.Fatalf("inspect allocates %v times a chunk", n)
	}
}

func TestParseUsage(t *testing.T) {
	body := []byte(`{"model":"m","choices":[{"message":{"content":"x"},"finish_reason":"length"}],"usage":{"prompt_tokens":7,"completion_tokens":9}}`)
	u := ParseUsage(body)
	copy(body, bytes.Repeat([]byte("#"), len(body))) // the caller may reuse its buffer
	if u != (Usage{InputTokens: 7, OutputTokens: 9, Reported: true, FinishReason: "length", ResponseModel: "m"}) {
		t.Fatalf("%+v", u)
	}
	if u := ParseUsage([]byte(`{"choices":[]}`)); u.Reported {
		t.Fatalf("%+v", u)
	}
}
