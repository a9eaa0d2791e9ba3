package sim

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// discard is a ResponseWriter that keeps nothing, so the benchmark measures
// the simulator and not a recorder.
type discard struct {
	h      http.Header
	status int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(status int)      { d.status = status }

// BenchmarkServeChat is the non-streaming hot path without latency: decode,
// plan, write the reply.
func BenchmarkServeChat(b *testing.B) {
	s := New(Config{})
	body := []byte(chatBody("Summarise the main causes of the French revolution in three bullet points.", `,"max_tokens":64,"temperature":0.2`))
	rd := bytes.NewReader(body)
	req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	req.Body = io.NopCloser(rd)
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		rd.Reset(body)
		clear(w.h)
		s.ServeHTTP(w, req)
	}
	if w.status != http.StatusOK {
		b.Fatalf("status %d", w.status)
	}
}

// BenchmarkServeChatStream is the streaming path without latency.
func BenchmarkServeChatStream(b *testing.B) {
	s := New(Config{MinTokens: 32, MaxTokens: 32})
	body := []byte(chatBody("Summarise the main causes of the French revolution.", `,"stream":true,"stream_options":{"include_usage":true}`))
	rd := bytes.NewReader(body)
	req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	req.Body = io.NopCloser(rd)
	w := &flushDiscard{discard{h: http.Header{}}}
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(body)
		clear(w.h)
		s.ServeHTTP(w, req)
	}
}

type flushDiscard struct{ discard }

func (f *flushDiscard) Flush() {}

// BenchmarkServeChatHTTP is a whole request over loopback HTTP, in parallel.
func BenchmarkServeChatHTTP(b *testing.B) {
	s := New(Config{})
	ts := httptest.NewServer(s)
	defer ts.Close()
	body := chatBody("Summarise the main causes of the French revolution in three bullet points.", `,"max_tokens":64`)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}
