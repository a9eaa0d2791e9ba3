package sim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// deadline bounds every wait for an asynchronous effect; generous because
// the tests share a small, busy machine.
const deadline = 10 * time.Second

func newTestServer(t *testing.T, c Config) (*Server, string) {
	t.Helper()
	s := New(c)
	ts := httptest.NewServer(s)
	t.Cleanup(func() {
		s.Close() // releases hanging requests so ts.Close does not wait for them
		ts.Close()
	})
	return s, ts.URL
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type reply struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Delta struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"delta"`
		Text         string          `json:"text"`
		FinishReason *string         `json:"finish_reason"`
		Logprobs     json.RawMessage `json:"logprobs"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

// text is the answer of a reply or the piece a chunk carries.
func (r *reply) text() string {
	c := r.Choices[0]
	return c.Message.Content + c.Delta.Content + c.Text
}

func post(t *testing.T, ctx context.Context, url, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// complete posts body and decodes a 200 non-streaming reply.
func complete(t *testing.T, url, body string) reply {
	t.Helper()
	resp := post(t, context.Background(), url, body)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var r reply
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("reply is not JSON: %v\n%s", err, b)
	}
	if len(r.Choices) != 1 {
		t.Fatalf("choices = %d, want 1: %s", len(r.Choices), b)
	}
	return r
}

// readEvents reads SSE data payloads until the body ends; err is the read
// error that ended it, nil on a clean end.
func readEvents(body io.Reader) (events []string, err error) {
	r := bufio.NewReader(body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if err == io.EOF && line == "" {
				return events, nil
			}
			return events, err
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			events = append(events, strings.TrimSuffix(data, "\n"))
			if blank, err := r.ReadString('\n'); err != nil || blank != "\n" {
				return events, errors.New("event not followed by a blank line")
			}
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func chatBody(prompt, extra string) string {
	b, _ := json.Marshal(prompt)
	return `{"model":"sim","messages":[{"role":"user","content":` + string(b) + `}]` + extra + `}`
}

func completionBody(prompt, extra string) string {
	b, _ := json.Marshal(prompt)
	return `{"model":"sim","prompt":` + string(b) + extra + `}`
}

func TestNonStreamUsage(t *testing.T) {
	s, url := newTestServer(t, Config{})
	prompt := "Explain in two sentences why the sky is blue."
	tests := []struct {
		name, path, body, object, idPrefix string
	}{
		{"chat", "/v1/chat/completions", chatBody(prompt, ""), "chat.completion", "chatcmpl-"},
		{"completions", "/v1/completions", completionBody(prompt, ""), "text_completion", "cmpl-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := complete(t, url+tt.path, tt.body)
			if r.Object != tt.object || !strings.HasPrefix(r.ID, tt.idPrefix) || r.Model != "sim" || r.Created == 0 {
				t.Errorf("object %q id %q model %q created %d", r.Object, r.ID, r.Model, r.Created)
			}
			u := r.Usage
			if u == nil {
				t.Fatal("no usage")
			}
			if u.PromptTokens != len(prompt)/4 {
				t.Errorf("prompt_tokens = %d, want %d", u.PromptTokens, len(prompt)/4)
			}
			if u.CompletionTokens < defaultMinTokens || u.CompletionTokens > defaultMaxTokens {
				t.Errorf("completion_tokens = %d, outside %d..%d", u.CompletionTokens, defaultMinTokens, defaultMaxTokens)
			}
			if u.TotalTokens != u.PromptTokens+u.CompletionTokens {
				t.Errorf("total_tokens = %d, want %d", u.TotalTokens, u.PromptTokens+u.CompletionTokens)
			}
			if n := len(strings.Fields(r.text())); n != u.CompletionTokens {
				t.Errorf("answer has %d words, usage says %d tokens", n, u.CompletionTokens)
			}
			if c := r.Choices[0]; c.FinishReason == nil || *c.FinishReason != "stop" || string(c.Logprobs) != "null" {
				t.Errorf("finish_reason %v logprobs %s", c.FinishReason, c.Logprobs)
			}
			if tt.name == "chat" && r.Choices[0].Message.Role != "assistant" {
				t.Errorf("role = %q", r.Choices[0].Message.Role)
			}
		})
	}
	st := s.Stats()
	if st.Requests != 2 || st.Completed != 2 || st.Running != 0 || st.Cancelled != 0 || st.Errors != 0 {
		t.Errorf("stats = %+v", st)
	}
	if st.PromptTokens != 2*int64(len(prompt)/4) || st.GenerationTokens < 2*defaultMinTokens {
		t.Errorf("token stats = %+v", st)
	}
}

func TestPromptTokensAtLeastOne(t *testing.T) {
	_, url := newTestServer(t, Config{})
	r := complete(t, url+"/v1/chat/completions", chatBody("hi", ""))
	if r.Usage.PromptTokens != 1 {
		t.Errorf("prompt_tokens = %d, want 1", r.Usage.PromptTokens)
	}
}

func TestStreamEvents(t *testing.T) {
	_, url := newTestServer(t, Config{MinTokens: 5, MaxTokens: 40})
	prompt := "Write a haiku about queues."
	tests := []struct {
		name, path, body string
		includeUsage     bool
		object           string
	}{
		{"chat", "/v1/chat/completions", chatBody(prompt, `,"stream":true`), false, "chat.completion.chunk"},
		{"chat usage", "/v1/chat/completions", chatBody(prompt, `,"stream":true,"stream_options":{"include_usage":true}`), true, "chat.completion.chunk"},
		{"completions", "/v1/completions", completionBody(prompt, `,"stream":true`), false, "text_completion"},
		{"completions usage", "/v1/completions", completionBody(prompt, `,"stream":true,"stream_options":{"include_usage":true}`), true, "text_completion"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plainBody := strings.Replace(tt.body, `,"stream":true`, "", 1)
			want := complete(t, url+tt.path, plainBody)

			resp := post(t, context.Background(), url+tt.path, tt.body)
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			events, err := readEvents(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			n := want.Usage.CompletionTokens
			wantEvents := n + 2 // tokens, finish, [DONE]
			if tt.includeUsage {
				wantEvents++
			}
			if len(events) != wantEvents {
				t.Fatalf("%d events, want %d: %q", len(events), wantEvents, events)
			}
			if events[len(events)-1] != "[DONE]" {
				t.Fatalf("last event %q, want [DONE]", events[len(events)-1])
			}
			var text strings.Builder
			for i, e := range events[:n] {
				var c reply
				if err := json.Unmarshal([]byte(e), &c); err != nil {
					t.Fatalf("chunk %d: %v: %s", i, err, e)
				}
				if c.Object != tt.object || c.Model != "sim" || c.ID != events0ID(t, events) || c.Usage != nil {
					t.Errorf("chunk %d: %s", i, e)
				}
				if len(c.Choices) != 1 || c.Choices[0].FinishReason != nil {
					t.Fatalf("chunk %d has no open choice: %s", i, e)
				}
				if i == 0 && strings.HasPrefix(tt.path, "/v1/chat") && c.Choices[0].Delta.Role != "assistant" {
					t.Errorf("first chunk has no assistant role: %s", e)
				}
				text.WriteString(c.text())
			}
			if text.String() != want.text() {
				t.Errorf("streamed %q, non-streamed %q", text.String(), want.text())
			}
			var fin reply
			if err := json.Unmarshal([]byte(events[n]), &fin); err != nil {
				t.Fatal(err)
			}
			if len(fin.Choices) != 1 || fin.Choices[0].FinishReason == nil || *fin.Choices[0].FinishReason != "stop" || fin.text() != "" {
				t.Errorf("finish chunk: %s", events[n])
			}
			if tt.includeUsage {
				var u reply
				if err := json.Unmarshal([]byte(events[n+1]), &u); err != nil {
					t.Fatal(err)
				}
				if u.Choices == nil || len(u.Choices) != 0 || u.Usage == nil || *u.Usage != *want.Usage {
					t.Errorf("usage chunk %s, want usage %+v", events[n+1], *want.Usage)
				}
			}
		})
	}
}

func events0ID(t *testing.T, events []string) string {
	t.Helper()
	var c reply
	if err := json.Unmarshal([]byte(events[0]), &c); err != nil {
		t.Fatal(err)
	}
	return c.ID
}

func TestDeterministicAnswers(t *testing.T) {
	_, url := newTestServer(t, Config{MinTokens: 4, MaxTokens: 60})
	lengths := map[int]bool{}
	for _, p := range []string{"a", "b", "what is 2+2?", "translate 'cat' to French", "summarise this text", "x y z", "hello there", "why?"} {
		a := complete(t, url+"/v1/chat/completions", chatBody(p, ""))
		b := complete(t, url+"/v1/chat/completions", chatBody(p, `,"temperature":0.7`))
		if a.text() != b.text() || *a.Usage != *b.Usage {
			t.Errorf("prompt %q: answers differ: %q / %q", p, a.text(), b.text())
		}
		n := a.Usage.CompletionTokens
		if n < 4 || n > 60 {
			t.Errorf("prompt %q: %d tokens, outside 4..60", p, n)
		}
		lengths[n] = true
	}
	if len(lengths) < 3 {
		t.Errorf("8 prompts gave only lengths %v: length should vary with the prompt", lengths)
	}
	c := complete(t, url+"/v1/chat/completions", chatBody("a", ""))
	d := complete(t, url+"/v1/chat/completions", chatBody("b", ""))
	if c.text() == d.text() {
		t.Errorf("different prompts gave the same answer %q", c.text())
	}
}

func TestMaxTokensCap(t *testing.T) {
	_, url := newTestServer(t, Config{MinTokens: 50, MaxTokens: 60})
	tests := []struct {
		name, path, body string
		want             int
		finish           string
	}{
		{"chat max_tokens", "/v1/chat/completions", chatBody("p", `,"max_tokens":3`), 3, "length"},
		{"chat max_completion_tokens", "/v1/chat/completions", chatBody("p", `,"max_tokens":30,"max_completion_tokens":7`), 7, "length"},
		{"completions max_tokens", "/v1/completions", completionBody("p", `,"max_tokens":5`), 5, "length"},
		{"cap above length", "/v1/chat/completions", chatBody("p", `,"max_tokens":1000`), -1, "stop"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := complete(t, url+tt.path, tt.body)
			got := r.Usage.CompletionTokens
			if tt.want > 0 && got != tt.want || tt.want < 0 && (got < 50 || got > 60) {
				t.Errorf("completion_tokens = %d, want %d", got, tt.want)
			}
			if n := len(strings.Fields(r.text())); n != got {
				t.Errorf("%d words for %d tokens", n, got)
			}
			if *r.Choices[0].FinishReason != tt.finish {
				t.Errorf("finish_reason = %q, want %q", *r.Choices[0].FinishReason, tt.finish)
			}
		})
	}
	t.Run("stream", func(t *testing.T) {
		resp := post(t, context.Background(), url+"/v1/chat/completions", chatBody("p", `,"max_tokens":2,"stream":true`))
		defer resp.Body.Close()
		events, err := readEvents(resp.Body)
		if err != nil || len(events) != 4 || !strings.Contains(events[2], `"finish_reason":"length"`) {
			t.Errorf("events %q, err %v", events, err)
		}
	})
}

// checkErrorShape asserts OpenAI's error shape and returns the error object.
func checkErrorShape(t *testing.T, resp *http.Response, status int) map[string]any {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, b)
	}
	var body struct {
		Error map[string]any `json:"error"`
	}
	if err := json.Unmarshal(b, &body); err != nil || body.Error == nil {
		t.Fatalf("not an OpenAI error: %v: %s", err, b)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := body.Error[k]; !ok {
			t.Errorf("error has no %q: %s", k, b)
		}
	}
	if m, _ := body.Error["message"].(string); m == "" {
		t.Errorf("empty message: %s", b)
	}
	return body.Error
}

func TestErrorInjection(t *testing.T) {
	s, url := newTestServer(t, Config{ErrorRate: 1, ErrorStatus: http.StatusServiceUnavailable})
	e := checkErrorShape(t, post(t, context.Background(), url+"/v1/chat/completions", chatBody("p", "")), http.StatusServiceUnavailable)
	if e["type"] != "server_error" {
		t.Errorf("type = %v", e["type"])
	}
	checkErrorShape(t, post(t, context.Background(), url+"/v1/completions", completionBody("p", `,"stream":true`)), http.StatusServiceUnavailable)
	if st := s.Stats(); st.Errors != 2 || st.Requests != 2 || st.Completed != 0 {
		t.Errorf("stats = %+v", st)
	}

	s.SetFaults(0, 0, 0, 0)
	complete(t, url+"/v1/chat/completions", chatBody("p", ""))

	s.SetFaults(1, 0, 0, 0) // default status
	checkErrorShape(t, post(t, context.Background(), url+"/v1/chat/completions", chatBody("p", "")), http.StatusInternalServerError)

	s.SetFaults(0.5, 429, 0, 0)
	failed := 0
	for range 200 {
		resp := post(t, context.Background(), url+"/v1/chat/completions", chatBody("p", `,"max_tokens":1`))
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusTooManyRequests:
			failed++
		case http.StatusOK:
		default:
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if failed < 50 || failed > 150 {
		t.Errorf("error rate 0.5 failed %d of 200", failed)
	}
}

func TestBadRequests(t *testing.T) {
	s, url := newTestServer(t, Config{})
	tests := []struct {
		name, path, body string
	}{
		{"bad JSON", "/v1/chat/completions", `{"model":"sim","messages":[`},
		{"not an object", "/v1/chat/completions", `[1,2]`},
		{"missing messages", "/v1/chat/completions", `{"model":"sim"}`},
		{"empty messages", "/v1/chat/completions", `{"model":"sim","messages":[]}`},
		{"bad content", "/v1/chat/completions", `{"model":"sim","messages":[{"role":"user","content":5}]}`},
		{"zero max_tokens", "/v1/chat/completions", chatBody("p", `,"max_tokens":0`)},
		{"missing prompt", "/v1/completions", `{"model":"sim"}`},
		{"bad logprobs", "/v1/completions", completionBody("p", `,"logprobs":"many"`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := checkErrorShape(t, post(t, context.Background(), url+tt.path, tt.body), http.StatusBadRequest)
			if e["type"] != "invalid_request_error" {
				t.Errorf("type = %v", e["type"])
			}
		})
	}
	if st := s.Stats(); st.Errors != int64(len(tests)) || st.Running != 0 {
		t.Errorf("stats = %+v", st)
	}
	resp, err := http.Get(url + "/v1/chat/completions")
	if err != nil {
		t.Fatal(err)
	}
	checkErrorShape(t, resp, http.StatusMethodNotAllowed)
	resp, err = http.Get(url + "/v2/nothing")
	if err != nil {
		t.Fatal(err)
	}
	checkErrorShape(t, resp, http.StatusNotFound)
}

func TestContentParts(t *testing.T) {
	_, url := newTestServer(t, Config{})
	a := complete(t, url+"/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"text","text":"hello world, how are you"}]}]}`)
	b := complete(t, url+"/v1/chat/completions", `{"messages":[{"role":"user","content":"hello world, how are you"}]}`)
	if a.text() != b.text() || a.Usage.PromptTokens != 6 {
		t.Errorf("parts %q (%d prompt tokens), string %q", a.text(), a.Usage.PromptTokens, b.text())
	}
	c := complete(t, url+"/v1/completions", `{"prompt":[1,2,3,4,5,6,7]}`)
	if c.Usage.PromptTokens != 7 {
		t.Errorf("token id prompt: prompt_tokens = %d, want 7", c.Usage.PromptTokens)
	}
}

func TestCloseAfterCutsStream(t *testing.T) {
	tests := []struct {
		name       string
		closeAfter int
		wantChunks int
	}{
		{"mid answer", 3, 3},
		{"past the answer", 100, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, url := newTestServer(t, Config{MinTokens: 10, MaxTokens: 10, CloseAfter: tt.closeAfter})
			resp := post(t, context.Background(), url+"/v1/chat/completions", chatBody("p", `,"stream":true,"stream_options":{"include_usage":true}`))
			defer resp.Body.Close()
			events, err := readEvents(resp.Body)
			if err == nil {
				t.Errorf("stream ended cleanly, want an abrupt close")
			}
			if len(events) != tt.wantChunks {
				t.Errorf("%d events before the cut, want %d: %q", len(events), tt.wantChunks, events)
			}
			for _, e := range events {
				if e == "[DONE]" || strings.Contains(e, `"finish_reason":"`) {
					t.Errorf("cut stream carried %q", e)
				}
			}
			waitFor(t, "Errors == 1", func() bool { return s.Stats().Errors == 1 })
			waitFor(t, "Running == 0", func() bool { return s.Stats().Running == 0 })
			if st := s.Stats(); st.Completed != 0 || st.Cancelled != 0 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
	t.Run("non-streaming unaffected", func(t *testing.T) {
		_, url := newTestServer(t, Config{CloseAfter: 2})
		complete(t, url+"/v1/chat/completions", chatBody("p", ""))
	})
}

func TestCancellation(t *testing.T) {
	t.Run("stream", func(t *testing.T) {
		s, url := newTestServer(t, Config{ITL: 20 * time.Millisecond, MinTokens: 1000, MaxTokens: 1000})
		resp := post(t, context.Background(), url+"/v1/chat/completions", chatBody("p", `,"stream":true`))
		r := bufio.NewReader(resp.Body)
		for chunks := 0; chunks < 2; {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(line, "data: ") {
				chunks++
			}
		}
		resp.Body.Close()
		waitFor(t, "Cancelled == 1", func() bool { return s.Stats().Cancelled == 1 })
		waitFor(t, "Running == 0", func() bool { return s.Stats().Running == 0 })
		st := s.Stats()
		if st.Completed != 0 || st.GenerationTokens >= 1000 {
			t.Errorf("stats = %+v: generation did not stop", st)
		}
	})
	t.Run("non-stream during TTFT", func(t *testing.T) {
		s, url := newTestServer(t, Config{TTFT: time.Hour})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", strings.NewReader(chatBody("p", "")))
			_, err := http.DefaultClient.Do(req)
			done <- err
		}()
		waitFor(t, "Running == 1", func() bool { return s.Stats().Running == 1 })
		cancel()
		if err := <-done; err == nil {
			t.Error("request succeeded, want cancelled")
		}
		waitFor(t, "Cancelled == 1", func() bool { return s.Stats().Cancelled == 1 })
		waitFor(t, "Running == 0", func() bool { return s.Stats().Running == 0 })
	})
	t.Run("hang", func(t *testing.T) {
		s, url := newTestServer(t, Config{HangRate: 1})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", strings.NewReader(completionBody("p", "")))
			_, err := http.DefaultClient.Do(req)
			done <- err
		}()
		waitFor(t, "Running == 1", func() bool { return s.Stats().Running == 1 })
		select {
		case err := <-done:
			t.Fatalf("hanging request answered: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		cancel()
		<-done
		waitFor(t, "Cancelled == 1", func() bool { return s.Stats().Cancelled == 1 })
	})
	t.Run("close cuts a hang", func(t *testing.T) {
		s, url := newTestServer(t, Config{HangRate: 1})
		done := make(chan error, 1)
		go func() {
			resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(completionBody("p", "")))
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		waitFor(t, "Running == 1", func() bool { return s.Stats().Running == 1 })
		s.Close()
		if err := <-done; err == nil {
			t.Error("request answered, want a cut connection")
		}
		waitFor(t, "Cancelled == 1", func() bool { return s.Stats().Cancelled == 1 })
	})
}

func TestMaxRunningQueues(t *testing.T) {
	s, url := newTestServer(t, Config{MaxRunning: 1, TTFT: time.Hour})
	var cancels []context.CancelFunc
	done := make(chan error, 2)
	for i := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", strings.NewReader(chatBody("p", "")))
			_, err := http.DefaultClient.Do(req)
			done <- err
		}()
		if i == 0 {
			waitFor(t, "Running == 1", func() bool { return s.Stats().Running == 1 })
		}
	}
	waitFor(t, "Waiting == 1", func() bool { return s.Stats().Waiting == 1 })
	m := metrics(t, url)
	for _, want := range []string{`vllm:num_requests_running{model_name="sim"} 1`, `vllm:num_requests_waiting{model_name="sim"} 1`} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	cancels[1]()
	<-done
	waitFor(t, "Waiting == 0", func() bool { return s.Stats().Waiting == 0 })
	waitFor(t, "Cancelled == 1", func() bool { return s.Stats().Cancelled == 1 })
	if st := s.Stats(); st.Running != 1 {
		t.Errorf("stats = %+v", st)
	}
	cancels[0]()
	<-done
	waitFor(t, "Cancelled == 2", func() bool { return s.Stats().Cancelled == 2 })
}

func metrics(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return string(b)
}

func TestMetrics(t *testing.T) {
	s, url := newTestServer(t, Config{Model: "llama-3-8b"})
	r := complete(t, url+"/v1/chat/completions", chatBody("Tell me about GPUs and their memory.", ""))
	m := metrics(t, url)
	label := `{model_name="llama-3-8b"`
	for _, name := range []string{
		"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
		"vllm:prompt_tokens_total", "vllm:generation_tokens_total",
	} {
		if !strings.Contains(m, "\n"+name+label+"} ") || !strings.Contains(m, "# TYPE "+name+" ") {
			t.Errorf("metrics lack %s", name)
		}
	}
	for _, name := range []string{"vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"} {
		for _, want := range []string{
			"# TYPE " + name + " histogram\n",
			name + "_bucket" + label + `,le="+Inf"} 1` + "\n",
			name + "_count" + label + "} 1\n",
			name + "_sum" + label + "} ",
		} {
			if !strings.Contains(m, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	}
	st := s.Stats()
	for _, want := range []string{
		"vllm:prompt_tokens_total" + label + "} " + itoa(st.PromptTokens) + "\n",
		"vllm:generation_tokens_total" + label + "} " + itoa(int64(r.Usage.CompletionTokens)) + "\n",
		"vllm:num_requests_running" + label + "} 0\n",
		"vllm:kv_cache_usage_perc" + label + "} 0\n",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q:\n%s", want, m)
		}
	}
}

func itoa(v int64) string { return string(appendInt(nil, v)) }

func TestLogprobs(t *testing.T) {
	_, url := newTestServer(t, Config{MinTokens: 5, MaxTokens: 20})
	type topEntry struct {
		Token   string  `json:"token"`
		Logprob float64 `json:"logprob"`
		Bytes   []int   `json:"bytes"`
	}
	type chatLogprobs struct {
		Content []struct {
			topEntry
			TopLogprobs []topEntry `json:"top_logprobs"`
		} `json:"content"`
	}
	t.Run("chat", func(t *testing.T) {
		r := complete(t, url+"/v1/chat/completions", chatBody("p", `,"logprobs":true,"top_logprobs":3`))
		var lp chatLogprobs
		if err := json.Unmarshal(r.Choices[0].Logprobs, &lp); err != nil {
			t.Fatalf("%v: %s", err, r.Choices[0].Logprobs)
		}
		if len(lp.Content) != r.Usage.CompletionTokens {
			t.Fatalf("%d logprobs for %d tokens", len(lp.Content), r.Usage.CompletionTokens)
		}
		var text strings.Builder
		for _, c := range lp.Content {
			text.WriteString(c.Token)
			if c.Logprob > 0 || len(c.Bytes) != len(c.Token) || len(c.TopLogprobs) != 3 || c.TopLogprobs[0].Token != c.Token {
				t.Errorf("entry %+v", c)
			}
			if c.TopLogprobs[1].Token == c.Token || c.TopLogprobs[1].Logprob >= c.Logprob {
				t.Errorf("alternatives %+v", c.TopLogprobs)
			}
		}
		if text.String() != r.text() {
			t.Errorf("logprob tokens %q, text %q", text.String(), r.text())
		}
	})
	t.Run("chat stream", func(t *testing.T) {
		resp := post(t, context.Background(), url+"/v1/chat/completions", chatBody("p", `,"stream":true,"logprobs":true`))
		defer resp.Body.Close()
		events, err := readEvents(resp.Body)
		if err != nil || len(events) < 3 {
			t.Fatalf("events %q, err %v", events, err)
		}
		for _, e := range events[:len(events)-2] {
			var c reply
			json.Unmarshal([]byte(e), &c)
			var lp chatLogprobs
			if err := json.Unmarshal(c.Choices[0].Logprobs, &lp); err != nil || len(lp.Content) != 1 || lp.Content[0].Token != c.text() {
				t.Errorf("chunk logprobs %s (err %v)", e, err)
			}
		}
	})
	t.Run("completions", func(t *testing.T) {
		r := complete(t, url+"/v1/completions", completionBody("p", `,"logprobs":2`))
		var lp struct {
			TextOffset    []int                `json:"text_offset"`
			TokenLogprobs []float64            `json:"token_logprobs"`
			Tokens        []string             `json:"tokens"`
			TopLogprobs   []map[string]float64 `json:"top_logprobs"`
		}
		if err := json.Unmarshal(r.Choices[0].Logprobs, &lp); err != nil {
			t.Fatalf("%v: %s", err, r.Choices[0].Logprobs)
		}
		n := r.Usage.CompletionTokens
		if len(lp.TextOffset) != n || len(lp.TokenLogprobs) != n || len(lp.Tokens) != n || len(lp.TopLogprobs) != n {
			t.Fatalf("logprobs arrays not %d long: %s", n, r.Choices[0].Logprobs)
		}
		text := r.text()
		for i, tok := range lp.Tokens {
			if text[lp.TextOffset[i]:lp.TextOffset[i]+len(tok)] != tok || len(lp.TopLogprobs[i]) != 2 {
				t.Errorf("token %d %q: offset %d, top %v", i, tok, lp.TextOffset[i], lp.TopLogprobs[i])
			}
		}
	})
	t.Run("not asked", func(t *testing.T) {
		r := complete(t, url+"/v1/chat/completions", chatBody("p", `,"logprobs":false`))
		if string(r.Choices[0].Logprobs) != "null" {
			t.Errorf("logprobs = %s, want null", r.Choices[0].Logprobs)
		}
	})
}

func TestModelName(t *testing.T) {
	_, url := newTestServer(t, Config{Model: "small"})
	for _, asked := range []string{"small", "auto", "gpt-4o"} {
		r := complete(t, url+"/v1/chat/completions", `{"model":"`+asked+`","messages":[{"role":"user","content":"hi"}]}`)
		if r.Model != "small" {
			t.Errorf("asked %q, reply names %q", asked, r.Model)
		}
	}
}

func TestModelsAndHealth(t *testing.T) {
	_, url := newTestServer(t, Config{Model: `odd "name"`})
	resp, err := http.Get(url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object, OwnedBy string
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	if list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != `odd "name"` || list.Data[0].Object != "model" {
		t.Errorf("models = %+v", list)
	}
	h, err := http.Get(url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	h.Body.Close()
	if h.StatusCode != http.StatusOK {
		t.Errorf("health status %d", h.StatusCode)
	}
}

func TestRegisterFlags(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if c.Model != "sim" || c.MinTokens != 16 || c.MaxTokens != 128 || c.ErrorStatus != 500 {
		t.Errorf("defaults = %+v", c)
	}
	err := fs.Parse([]string{
		"--model", "m", "--ttft", "50ms", "--itl", "5ms", "--min-tokens", "2", "--max-tokens", "9",
		"--error-rate", "0.1", "--error-status", "503", "--hang-rate", "0.2", "--close-after", "4",
		"--slow-start", "1s", "--seed", "7", "--max-running", "8", "--kv-cache-tokens", "1000",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Model: "m", TTFT: 50 * time.Millisecond, ITL: 5 * time.Millisecond, MinTokens: 2, MaxTokens: 9,
		ErrorRate: 0.1, ErrorStatus: 503, HangRate: 0.2, CloseAfter: 4, SlowStart: time.Second, Seed: 7,
		MaxRunning: 8, KVCacheTokens: 1000}
	if c != want {
		t.Errorf("parsed %+v\nwant   %+v", c, want)
	}
}

func TestJSONEscaping(t *testing.T) {
	for _, s := range []string{"plain", `q"uote\`, "ctl\n\t\x01", "ünï©ødé", "bad\xffutf8"} {
		var got string
		if err := json.Unmarshal(appendString(nil, s), &got); err != nil {
			t.Errorf("%q: %v", s, err)
			continue
		}
		want := strings.ToValidUTF8(s, "\ufffd")
		if got != want {
			t.Errorf("round trip %q → %q", s, got)
		}
	}
}

// TestLatency checks lower bounds only: timers never fire early, while a
// busy machine may make anything late.
func TestLatency(t *testing.T) {
	const ttft, itl, slow = 30 * time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond
	s, url := newTestServer(t, Config{TTFT: ttft, ITL: itl, SlowStart: slow, MinTokens: 10, MaxTokens: 10})
	start := time.Now()
	complete(t, url+"/v1/chat/completions", chatBody("p", ""))
	if d := time.Since(start); d < ttft+slow+9*itl {
		t.Errorf("non-streaming answer after %v, want at least %v", d, ttft+slow+9*itl)
	}

	start = time.Now()
	resp := post(t, context.Background(), url+"/v1/chat/completions", chatBody("p", `,"stream":true`))
	defer resp.Body.Close()
	first := time.Since(start) // headers come with the first token
	events, err := readEvents(resp.Body)
	if err != nil || len(events) != 12 {
		t.Fatalf("events %q, err %v", events, err)
	}
	if first < ttft+slow {
		t.Errorf("first byte after %v, want at least %v", first, ttft+slow)
	}
	if d := time.Since(start); d < ttft+slow+9*itl {
		t.Errorf("stream done after %v, want at least %v", d, ttft+slow+9*itl)
	}
	m := metrics(t, url)
	// Both TTFTs were at least 50ms: none may fall in the 40ms bucket.
	if !strings.Contains(m, `vllm:time_to_first_token_seconds_bucket{model_name="sim",le="0.04"} 0`+"\n") ||
		!strings.Contains(m, `vllm:time_to_first_token_seconds_count{model_name="sim"} 2`+"\n") {
		t.Errorf("TTFT histogram:\n%s", m)
	}
	if st := s.Stats(); st.Completed != 2 {
		t.Errorf("stats = %+v", st)
	}
}

// TestConcurrentFaultChanges runs requests while faults change, for the
// race detector, and checks every request is accounted for once.
func TestConcurrentFaultChanges(t *testing.T) {
	s, url := newTestServer(t, Config{Seed: 42})
	const workers, perWorker = 4, 25
	done := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			s.SetFaults(float64(i%3)/4, 500+i%4, 0, 0)
			time.Sleep(time.Millisecond)
		}
	}()
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := range perWorker {
				body := chatBody("worker "+itoa(int64(w))+" request "+itoa(int64(i)), `,"max_tokens":8`)
				if i%2 == 1 {
					body = chatBody("p", `,"max_tokens":8,"stream":true`)
				}
				resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	close(done)
	st := s.Stats()
	if st.Requests != workers*perWorker || st.Completed+st.Errors != st.Requests || st.Running != 0 || st.Waiting != 0 {
		t.Errorf("stats = %+v", st)
	}
}
