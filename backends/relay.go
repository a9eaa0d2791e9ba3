package backends

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"
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

// ReadAnswer reads and checks a non-streaming answer. Each read may wait at
// most idle for bytes (0: no bound but the request's), the body may be at
// most max (> 0) bytes, and it must be what a completion is: a JSON content type
// and a JSON object, at most 128 deep, with a "choices" array. A body that
// stalls is an error wrapping ErrTimeout; one that is not a completion, is
// too large or breaks off wraps ErrInvalidResponse; one whose request was
// cancelled wraps context.Canceled. Pass the error to Finish.
func (r *Response) ReadAnswer(idle time.Duration, max int64) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); !isJSONType(ct) {
		return nil, fmt.Errorf("%w: content type %q", ErrInvalidResponse, truncate([]byte(ct), 60))
	}
	if r.ContentLength > max {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidResponse, r.ContentLength, max)
	}
	var idler *time.Timer
	if idle > 0 {
		idler = time.AfterFunc(idle, func() { r.idleFired.Store(true); r.cancel() })
		defer idler.Stop()
	}
	size := int64(8 << 10)
	if r.ContentLength >= 0 {
		// Room to read the EOF without growing; but what the upstream
		// claims is not allocated before it arrives.
		size = min(r.ContentLength+1, 1<<20)
	}
	b := make([]byte, 0, min(size, max+1))
	for {
		if len(b) == cap(b) {
			b = slices.Grow(b, int(min(int64(cap(b)), max+1-int64(len(b)))))
		}
		n, err := r.Body.Read(b[len(b):cap(b)])
		if n > 0 && idler != nil {
			idler.Reset(idle)
		}
		b = b[:len(b)+n]
		if int64(len(b)) > max {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrInvalidResponse, max)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, r.readError(err, len(b), idle)
		}
	}
	// Validation first bounds the depth: the lookup after it cannot recurse deeply.
	if !validJSON(b) {
		return nil, fmt.Errorf("%w: not JSON (%d bytes)", ErrInvalidResponse, len(b))
	}
	if !gjson.Get(view(b), "choices").IsArray() {
		return nil, fmt.Errorf("%w: no choices array", ErrInvalidResponse)
	}
	return b, nil
}

func (r *Response) readError(err error, n int, idle time.Duration) error {
	var ne net.Error
	switch {
	case r.idleFired.Load():
		return fmt.Errorf("%w: the answer stalled for %v after %d bytes", ErrTimeout, idle, n)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: the request's time ran out while reading the answer", ErrTimeout)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("reading the answer: %w", context.Canceled)
	}
	return fmt.Errorf("%w: the answer broke off after %d bytes", ErrInvalidResponse, n)
}

// isEventStream reports whether a Content-Type is text/event-stream.
func isEventStream(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// isJSONType reports whether a Content-Type is application/json or a
// +json type, with any parameters.
func isJSONType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.TrimSpace(mt)
	return strings.EqualFold(mt, "application/json") ||
		len(mt) > 5 && strings.EqualFold(mt[len(mt)-5:], "+json")
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
// usage it saw. It checks every "data:" line (a JSON object or [DONE]) and
// interprets nothing else.
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
	// midLine: the last piece returned ended inside a line (a line longer
	// than the buffer is passed on in pieces).
	midLine bool
	// inEvent: the lines returned so far end inside an event (the last
	// whole line was not blank).
	inEvent bool
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
// until the next call. At the end of a stream that sent [DONE] it returns
// io.EOF; at the end of one that did not, an error wrapping
// ErrStreamTruncated, and a last line without its newline is not returned
// (it was cut). A "data:" line that is neither a JSON object nor [DONE] is
// not returned either: Next returns an error wrapping ErrInvalidResponse.
// Other read errors are returned as they are.
func (s *StreamScanner) Next() ([]byte, error) {
	s.UsageOnly = false
	line, err := s.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// An unusually long line (over 16 KiB): pass it on in pieces,
		// unchecked; holding it whole would let the upstream choose how
		// much memory a stream takes.
		s.midLine, s.inEvent = true, true
		return line, nil
	}
	if err == io.EOF && !s.midLine && bytes.HasPrefix(line, dataPrefix) && bytes.Equal(bytes.TrimSpace(line[len(dataPrefix):]), doneMarker) {
		s.Done = true // a last line without its newline, but whole
		return line, nil
	}
	if err != nil {
		if err == io.EOF && !s.Done {
			err = ErrStreamTruncated
		}
		return nil, err
	}
	if s.midLine { // the end of a long line
		s.midLine = false
		return line, nil
	}
	if bytes.HasPrefix(line, dataPrefix) {
		payload := bytes.TrimSpace(line[len(dataPrefix):])
		switch {
		case s.Done: // nothing after [DONE] matters
		case bytes.Equal(payload, doneMarker):
			s.Done = true
		case len(payload) > 0 && payload[0] == '{' && validJSON(payload):
			s.inspect(payload)
		default:
			return nil, fmt.Errorf("%w: a data line that is neither a JSON object nor [DONE]", ErrInvalidResponse)
		}
	}
	s.inEvent = line[0] != '\n' && line[0] != '\r'
	return line, nil
}

// EventEnd is what a relay must write after the lines Next returned so far
// for what it writes next (an error event) to be an event of its own: "" at
// an event boundary, a blank line after a field line, or a newline and a
// blank line when a long line was cut in the middle.
func (s *StreamScanner) EventEnd() string {
	switch {
	case s.midLine:
		return "\n\n"
	case s.inEvent:
		return "\n"
	}
	return ""
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
