package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
)

// benchChatBody is a realistic chat request of about size bytes: a system
// prompt, a few turns and the usual sampling fields.
func benchChatBody(size int, stream bool) []byte {
	var b bytes.Buffer
	b.WriteString(`{"model":"small","temperature":0.2,"top_p":0.95,"max_tokens":1024,`)
	if stream {
		b.WriteString(`"stream":true,`)
	}
	b.WriteString(`"messages":[{"role":"system","content":"You are a careful assistant. Answer briefly and cite the relevant passage."}`)
	turn := 0
	for b.Len() < size-200 {
		role := "user"
		if turn%2 == 1 {
			role = "assistant"
		}
		fmt.Fprintf(&b, `,{"role":%q,"content":"Turn %d: the quick brown fox jumps over the lazy dog, then asks about \"quoted\" words and unicode like café and 東京."}`, role, turn)
		turn++
	}
	b.WriteString(`,{"role":"user","content":"Summarise the conversation in one sentence."}]}`)
	return b.Bytes()
}

func BenchmarkParse(b *testing.B) {
	for _, size := range []int{1 << 10, 8 << 10} {
		body := benchChatBody(size, false)
		// "strict" is the encoding/json parser alone, which the fast path
		// replaces for well-formed requests.
		for _, p := range []struct {
			name  string
			parse func([]byte, bool) (*request, error)
		}{{"", func(b []byte, chat bool) (*request, error) { return parseRequest(b, chat, 64) }}, {"strict-", parseStrict}} {
			b.Run(fmt.Sprintf("%schat-%dKB", p.name, size>>10), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				for b.Loop() {
					r, err := p.parse(body, true)
					if err != nil || len(r.Messages) < 3 {
						b.Fatalf("parse: %v", err)
					}
				}
			})
		}
	}
}

// benchClient is a keep-alive HTTP client over loopback, the same for the
// direct and the gateway runs so that their difference is the gateway's.
func benchClient(b *testing.B) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// benchSetup starts a zero-latency simulator and a gateway in front of it.
// It returns the simulator's and the gateway's chat completions URLs.
func benchSetup(b *testing.B, tokens int) (*Gateway, string, string) {
	_, simURL := simServer(b, sim.Config{Model: "small-model", MinTokens: tokens, MaxTokens: tokens})
	g, base := startGateway(b, testConfig(b, []string{simURL}, []string{simURL}), Options{})
	return g, simURL + "/chat/completions", base + "/v1/chat/completions"
}

func post(b *testing.B, c *http.Client, url string, body []byte) int {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("status %d", resp.StatusCode)
	}
	return int(n)
}

// BenchmarkHandler is one non-streaming chat completion at a time through
// the whole gateway (fiber, parse, route, upstream client) to a zero-latency
// simulator over loopback. "direct" is the same request sent straight to the
// simulator; gateway minus direct is what the gateway adds to a request.
// Allocations are counted process-wide (client, gateway and simulator).
func BenchmarkHandler(b *testing.B) {
	_, direct, gw := benchSetup(b, 32)
	c := benchClient(b)
	body := benchChatBody(1<<10, false)
	for _, tc := range []struct{ name, url string }{{"direct", direct}, {"gateway", gw}} {
		b.Run(tc.name, func(b *testing.B) {
			post(b, c, tc.url, body) // warm the connections
			b.ReportAllocs()
			for b.Loop() {
				post(b, c, tc.url, body)
			}
		})
	}
}

// BenchmarkHandlerParallel is BenchmarkHandler with concurrent clients: the
// throughput view (ns/op is wall time divided by requests).
func BenchmarkHandlerParallel(b *testing.B) {
	_, direct, gw := benchSetup(b, 32)
	c := benchClient(b)
	body := benchChatBody(1<<10, false)
	for _, tc := range []struct{ name, url string }{{"direct", direct}, {"gateway", gw}} {
		b.Run(tc.name, func(b *testing.B) {
			post(b, c, tc.url, body)
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					post(b, c, tc.url, body)
				}
			})
		})
	}
}

// BenchmarkHandlerInProcess calls the fiber app's handler directly, with no
// client socket: the gateway's own server-side work plus the upstream call
// to the simulator over loopback.
func BenchmarkHandlerInProcess(b *testing.B) {
	g, _, _ := benchSetup(b, 32)
	benchInProcess(b, g, benchChatBody(1<<10, false))
}

// benchInProcess calls g's fiber handler in-process with a chat request body
// once per iteration: no client socket, the upstream over loopback.
func benchInProcess(b *testing.B, g *Gateway, body []byte) {
	h := g.App().Handler()
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	b.ReportAllocs()
	for b.Loop() {
		req.Reset()
		req.Header.SetMethod(http.MethodPost)
		req.SetRequestURI("/v1/chat/completions")
		req.Header.SetContentType("application/json")
		req.SetBody(body)
		ctx.Init(&req, nil, nil)
		h(&ctx)
		if ctx.Response.StatusCode() != http.StatusOK {
			b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
}

// BenchmarkHandlerStream is one streaming chat completion of N chunks at a
// time, read to the end, direct to the simulator and through the gateway.
func BenchmarkHandlerStream(b *testing.B) {
	for _, chunks := range []int{16, 128} {
		_, direct, gw := benchSetup(b, chunks)
		c := benchClient(b)
		body := benchChatBody(1<<10, true)
		for _, tc := range []struct{ name, url string }{{"direct", direct}, {"gateway", gw}} {
			b.Run(fmt.Sprintf("chunks=%d/%s", chunks, tc.name), func(b *testing.B) {
				readStream(b, c, tc.url, body, chunks)
				b.ReportAllocs()
				for b.Loop() {
					readStream(b, c, tc.url, body, chunks)
				}
			})
		}
	}
}

// readStream reads an SSE answer and checks it has at least the expected
// content events and the final [DONE].
func readStream(b *testing.B, c *http.Client, url string, body []byte, chunks int) {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("status %d", resp.StatusCode)
	}
	br := bufio.NewReaderSize(resp.Body, 8<<10)
	events, done := 0, false
	for {
		line, err := br.ReadSlice('\n')
		if bytes.HasPrefix(line, []byte("data: ")) {
			events++
			if bytes.HasPrefix(line[6:], []byte("[DONE]")) {
				done = true
			}
		}
		if err != nil {
			break
		}
	}
	if !done || events < chunks {
		b.Fatalf("stream: %d events, done %v", events, done)
	}
}

// BenchmarkUpstreamClient is one non-streaming completion from the
// simulator over loopback with the client the backends package uses
// (net/http, pooled keep-alive connections) and with fasthttp's HostClient,
// for comparison: the upstream call is a large part of what the gateway adds
// to a request.
func BenchmarkUpstreamClient(b *testing.B) {
	_, simURL := simServer(b, sim.Config{Model: "small-model", MinTokens: 32, MaxTokens: 32})
	url := simURL + "/chat/completions"
	body := benchChatBody(1<<10, false)
	b.Run("net-http", func(b *testing.B) {
		c := benchClient(b)
		post(b, c, url, body)
		b.ReportAllocs()
		for b.Loop() {
			post(b, c, url, body)
		}
	})
	b.Run("fasthttp", func(b *testing.B) {
		hc := &fasthttp.HostClient{Addr: strings.TrimPrefix(strings.Split(simURL, "/v1")[0], "http://"),
			MaxIdleConnDuration: 100 * time.Millisecond,
			// A plain dialer: fasthttp's default one starts a DNS cache
			// cleaner that never exits.
			Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}
		defer hc.CloseIdleConnections()
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		do := func() {
			req.Reset()
			req.Header.SetMethod(http.MethodPost)
			req.SetRequestURI(url)
			req.Header.SetContentType("application/json")
			req.SetBody(body)
			if err := hc.Do(req, resp); err != nil || resp.StatusCode() != http.StatusOK || len(resp.Body()) == 0 {
				b.Fatalf("fasthttp: %v %d", err, resp.StatusCode())
			}
		}
		do()
		b.ReportAllocs()
		for b.Loop() {
			do()
		}
	})
}

// BenchmarkHandlerCascade compares one non-streaming request in route mode
// with the same request in cascade mode (the cheap answer asked with top-5
// logprobs, held, judged and released), against a zero-latency simulator
// that confidently answers with 32 tokens. cascade minus route is what
// judging the answer costs the gateway, beyond the small model's own time
// (the simulator's logprobs serialisation is in both "direct-logprobs" and
// "cascade").
func BenchmarkHandlerCascade(b *testing.B) {
	_, simURL := simServer(b, sim.Config{Model: "small-model", MinTokens: 32, MaxTokens: 32})
	route := testConfig(b, []string{simURL}, []string{simURL})
	casc := testConfig(b, []string{simURL}, []string{simURL})
	casc.Routing.Mode = config.ModeCascade
	_, routeBase := startGateway(b, route, Options{})
	_, cascBase := startGateway(b, casc, Options{})
	c := benchClient(b)
	body := bytes.Replace(benchChatBody(1<<10, false), []byte(`"model":"small"`), []byte(`"model":"auto"`), 1)
	body = bytes.Replace(body, []byte("Summarise the conversation"), []byte("[[easy]] Summarise the conversation"), 1)
	withLP := bytes.Replace(body, []byte(`"model":"auto",`), []byte(`"model":"small-model","logprobs":true,"top_logprobs":5,`), 1)
	for _, tc := range []struct {
		name, url string
		body      []byte
	}{{"direct-logprobs", simURL + "/chat/completions", withLP},
		{"route", routeBase + "/v1/chat/completions", body},
		{"cascade", cascBase + "/v1/chat/completions", body}} {
		b.Run(tc.name, func(b *testing.B) {
			post(b, c, tc.url, tc.body)
			b.ReportAllocs()
			for b.Loop() {
				post(b, c, tc.url, tc.body)
			}
		})
	}
}
