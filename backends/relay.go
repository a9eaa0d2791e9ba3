package backends

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"unsafe"

	"github.com/tidwall/gjson"
)

// Usage is token accounting as the backend reported it.
type Usage struct {
	InputTokens  int
	OutputTokens int
	// Reported is false when the backend sent no usage.
	Reported bool
	// FinishReason of the first choice, if seen.
	FinishReason string
	// ResponseModel is the model the backend said answered.
	ResponseModel string
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func readLimited(resp *http.Response, n int64) []byte {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, n))
	resp.Body.Close()
	return b
}

// ParseUsage reads usage, finish reason and model from a non-streaming
// completion body.
func ParseUsage(body []byte) Usage {
	js := view(body)
	in, out := gjson.Get(js, "usage.prompt_tokens"), gjson.Get(js, "usage.completion_tokens")
	return Usage{
		InputTokens:   int(in.Int()),
		OutputTokens:  int(out.Int()),
		Reported:      in.Exists() || out.Exists(),
		FinishReason:  strings.Clone(gjson.Get(js, "choices.0.finish_reason").String()),
		ResponseModel: strings.Clone(gjson.Get(js, "model").String()),
	}
}

// view is b as a string without copying it, for gjson lookups (which, on
// []byte, copy every result). Strings taken from a view must be cloned if
// they are kept, since b's bytes may be reused.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// StreamScanner reads an upstream SSE stream event by event and keeps the
// usage it saw. It does not interpret anything but "data:" lines.
type StreamScanner struct {
	r     *bufio.Reader
	Usage Usage
	// Chunks counts content chunks seen (for estimating partial output).
	Chunks int
	// Done is true once "data: [DONE]" was read.
	Done bool
	// UsageOnly is true when the line just returned is a chunk that carries
	// usage and no choices (the include_usage chunk).
	UsageOnly bool
}

// NewStreamScanner wraps an upstream SSE body.
func NewStreamScanner(body io.Reader) *StreamScanner {
	return &StreamScanner{r: bufio.NewReaderSize(body, 16<<10)}
}

var (
	dataPrefix = []byte("data:")
	doneMarker = []byte("[DONE]")
)

// Next returns the next line including its newline. The slice is valid only
// until the next call. At the end of the body it returns io.EOF.
func (s *StreamScanner) Next() ([]byte, error) {
	s.UsageOnly = false
	line, err := s.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// An unusually long event: pass it on in pieces, inspect nothing.
		return line, nil
	}
	if len(line) == 0 {
		return nil, err
	}
	if bytes.HasPrefix(line, dataPrefix) {
		payload := bytes.TrimSpace(line[len(dataPrefix):])
		switch {
		case bytes.Equal(payload, doneMarker):
			s.Done = true
		case len(payload) > 0 && payload[0] == '{':
			s.inspect(payload)
		}
	}
	if err == io.EOF && len(line) > 0 {
		return line, nil
	}
	return line, err
}

// It runs on every chunk: lookups are on a view of p and allocate nothing
// unless a string is kept.
func (s *StreamScanner) inspect(p []byte) {
	js := view(p) // p is the reader's buffer: clone what is kept
	in, out := gjson.Get(js, "usage.prompt_tokens"), gjson.Get(js, "usage.completion_tokens")
	if in.Exists() || out.Exists() {
		s.Usage.InputTokens, s.Usage.OutputTokens, s.Usage.Reported = int(in.Int()), int(out.Int()), true
	}
	if fr := gjson.Get(js, "choices.0.finish_reason").String(); fr != "" && fr != s.Usage.FinishReason {
		s.Usage.FinishReason = strings.Clone(fr)
	}
	if s.Usage.ResponseModel == "" {
		s.Usage.ResponseModel = strings.Clone(gjson.Get(js, "model").String())
	}
	if gjson.Get(js, "choices.#").Int() > 0 {
		s.Chunks++
	} else if in.Exists() {
		s.UsageOnly = true
	}
}

// LineReady reports whether a whole next line has already arrived, so that
// Next will return it without waiting for the upstream. A relay flushes to
// its client only when nothing more is ready: events that arrived together
// leave together, and none waits for a later one.
func (s *StreamScanner) LineReady() bool {
	n := s.r.Buffered()
	if n == 0 {
		return false
	}
	b, _ := s.r.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}
