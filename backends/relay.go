package backends

import (
	"bufio"
	"bytes"
	"io"
	"net/http"

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
	r := gjson.GetManyBytes(body, "usage.prompt_tokens", "usage.completion_tokens", "choices.0.finish_reason", "model")
	return Usage{
		InputTokens:   int(r[0].Int()),
		OutputTokens:  int(r[1].Int()),
		Reported:      r[0].Exists() || r[1].Exists(),
		FinishReason:  r[2].String(),
		ResponseModel: r[3].String(),
	}
}

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

func (s *StreamScanner) inspect(p []byte) {
	r := gjson.GetManyBytes(p, "usage.prompt_tokens", "usage.completion_tokens", "choices.0.finish_reason", "model", "choices.#")
	if r[0].Exists() || r[1].Exists() {
		s.Usage.InputTokens, s.Usage.OutputTokens, s.Usage.Reported = int(r[0].Int()), int(r[1].Int()), true
	}
	if fr := r[2].String(); fr != "" {
		s.Usage.FinishReason = fr
	}
	if s.Usage.ResponseModel == "" {
		s.Usage.ResponseModel = r[3].String()
	}
	if r[4].Int() > 0 {
		s.Chunks++
	} else if r[0].Exists() {
		s.UsageOnly = true
	}
}
