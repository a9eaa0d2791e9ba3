package backends

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
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

const streamChunk = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n"

// scanAll reads a stream to its end and returns what Next passed on.
func scanAll(sc *StreamScanner) (string, error) {
	var out strings.Builder
	for {
		line, err := sc.Next()
		out.Write(line)
		if err != nil {
			return out.String(), err
		}
	}
}

func TestStreamScannerChecksEvents(t *testing.T) {
	for _, tc := range []struct {
		name, in, out string
		want          error
		eventEnd      string
	}{
		{"complete", streamChunk + "data: [DONE]\n\n", streamChunk + "data: [DONE]\n\n", io.EOF, ""},
		{"done without newline", streamChunk + "data: [DONE]", streamChunk + "data: [DONE]", io.EOF, ""},
		{"comments and fields", ": ping\nevent: x\nid: 1\n" + streamChunk + "data: [DONE]\n\n", ": ping\nevent: x\nid: 1\n" + streamChunk + "data: [DONE]\n\n", io.EOF, ""},
		{"no done", streamChunk, streamChunk, ErrStreamTruncated, ""},
		{"cut mid-event", streamChunk + streamChunk[:40], streamChunk, ErrStreamTruncated, ""},
		{"cut after a field", streamChunk + "event: x\n", streamChunk + "event: x\n", ErrStreamTruncated, "\n"},
		{"cut before the blank line", streamChunk[:len(streamChunk)-1], streamChunk[:len(streamChunk)-1], ErrStreamTruncated, "\n"},
		{"malformed data", streamChunk + "data: {\"choices\":[}\n\n", streamChunk, ErrInvalidResponse, ""},
		{"html", "<html>\n", "<html>\n", ErrStreamTruncated, "\n"},
		{"data not an object", "data: [1,2]\n\n", "", ErrInvalidResponse, ""},
		{"empty data", "data:\n\n", "", ErrInvalidResponse, ""},
		{"deep data", "data: {\"a\":" + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + "}\n\n", "", ErrInvalidResponse, ""},
		{"after done", "data: [DONE]\n\nnot data\ndata: junk\n", "data: [DONE]\n\nnot data\ndata: junk\n", io.EOF, "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := NewStreamScanner(strings.NewReader(tc.in))
			out, err := scanAll(sc)
			if !errors.Is(err, tc.want) || out != tc.out || sc.EventEnd() != tc.eventEnd {
				t.Fatalf("passed on %q, %v, event end %q; want %q, %v, %q", out, err, sc.EventEnd(), tc.out, tc.want, tc.eventEnd)
			}
			if tc.want == ErrStreamTruncated && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%v is not an unexpected EOF", err)
			}
		})
	}
}

func TestStreamScannerLongLine(t *testing.T) {
	// A line longer than the buffer is passed on in pieces; cut inside it,
	// the relay must end the line and the event.
	long := "data: {\"x\":\"" + strings.Repeat("y", 40<<10) + "\"}\n\n"
	sc := NewStreamScanner(strings.NewReader(long + "data: [DONE]\n\n"))
	if out, err := scanAll(sc); err != io.EOF || out != long+"data: [DONE]\n\n" {
		t.Fatalf("%d bytes, %v", len(out), err)
	}
	sc = NewStreamScanner(strings.NewReader(long[:30<<10]))
	if _, err := scanAll(sc); !errors.Is(err, ErrStreamTruncated) || sc.EventEnd() != "\n\n" {
		t.Fatalf("%v, event end %q", err, sc.EventEnd())
	}
}

func TestStreamCutOverHTTP(t *testing.T) {
	// The upstream sends a chunk and half of the next, then closes.
	up := newUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, streamChunk+streamChunk[:50])
	})
	f := newFixture(t, 5*time.Second, 1, up)
	resp, err := f.pool.Send(context.Background(), f.c, chatRequest(), 0)
	if err != nil {
		t.Fatal(err)
	}
	sc := NewStreamScanner(resp.Body)
	out, err := scanAll(sc)
	resp.Finish(err)
	if out != streamChunk || !errors.Is(err, ErrStreamTruncated) || sc.Chunks != 1 {
		t.Fatalf("passed on %q, %v", out, err)
	}
	if resp.Endpoint.BreakerState() != gobreaker.StateOpen {
		t.Fatal("a cut stream did not count against the endpoint")
	}
}

func TestStreamScannerNextAllocs(t *testing.T) {
	sc := NewStreamScanner(strings.NewReader(strings.Repeat(streamChunk, 1000)))
	sc.Next() // keeps the model once
	if n := testing.AllocsPerRun(500, func() {
		if _, err := sc.Next(); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Next allocates %v times a line", n)
	}
}

// BenchmarkStreamScanner reads a stream of 128 chunks and [DONE]; ns/chunk
// is the scanner's cost per relayed chunk.
func BenchmarkStreamScanner(b *testing.B) {
	stream := []byte(strings.Repeat(streamChunk, 128) + "data: [DONE]\n\n")
	r := bytes.NewReader(stream)
	sc := NewStreamScanner(r)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(stream)
		sc.r.Reset(r)
		sc.Done = false
		for {
			if _, err := sc.Next(); err != nil {
				break
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*128), "ns/chunk")
}
