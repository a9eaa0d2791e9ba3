package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/cascade-gateway/cascade/config"
)

func TestBadInputs(t *testing.T) {
	cfg := testConfig(t, []string{"http://127.0.0.1:1/v1"}, []string{"http://127.0.0.1:1/v1"})
	cfg.MaxBodyBytes = 1 << 10
	_, base := startGateway(t, cfg, Options{})
	huge := `{"model":"auto","messages":[{"role":"user","content":"` + strings.Repeat("x", 2<<10) + `"}]}`
	cases := []struct {
		name, path, body string
		status           int
		param, contains  string
	}{
		{"malformed JSON", "/v1/chat/completions", `{"model":"auto","messages":[`, 400, "", "not valid JSON"},
		{"not an object", "/v1/chat/completions", `[1,2]`, 400, "", "must be a JSON object"},
		{"empty body", "/v1/chat/completions", ``, 400, "", "body is empty"},
		{"missing model", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, 400, "model", "'model' is required"},
		{"model wrong type", "/v1/chat/completions", `{"model":7,"messages":[{"role":"user","content":"hi"}]}`, 400, "model", "'model' must be of type string"},
		{"missing messages", "/v1/chat/completions", `{"model":"auto"}`, 400, "messages", "'messages' is required"},
		{"empty messages", "/v1/chat/completions", `{"model":"auto","messages":[]}`, 400, "messages", "at least one message"},
		{"messages not array", "/v1/chat/completions", `{"model":"auto","messages":"hi"}`, 400, "messages", "must be an array"},
		{"content wrong type", "/v1/chat/completions", `{"model":"auto","messages":[{"role":"user","content":5}]}`, 400, "messages[0].content", "must be a string or an array"},
		{"missing role", "/v1/chat/completions", `{"model":"auto","messages":[{"content":"hi"}]}`, 400, "messages[0].role", "role' is required"},
		{"stream wrong type", "/v1/chat/completions", `{"model":"auto","stream":"yes","messages":[{"role":"user","content":"hi"}]}`, 400, "stream", "'stream' must be of type boolean"},
		{"negative max_tokens", "/v1/chat/completions", `{"model":"auto","max_tokens":-1,"messages":[{"role":"user","content":"hi"}]}`, 400, "max_tokens", "must not be negative"},
		{"unknown model", "/v1/chat/completions", `{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}`, 404, "model", "The model 'gpt-9' does not exist"},
		{"body too large", "/v1/chat/completions", huge, 413, "", "larger than the configured max_body_bytes"},
		{"completions without prompt", "/v1/completions", `{"model":"auto"}`, 400, "prompt", "'prompt' is required"},
		{"completions prompt wrong type", "/v1/completions", `{"model":"auto","prompt":{"a":1}}`, 400, "prompt", "must be a string or an array of strings"},
		{"unknown route", "/v1/embeddings", `{}`, 404, "", "no route POST /v1/embeddings"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Post(base+tc.path, "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tc.status, raw)
			}
			var e struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			if err := json.Unmarshal(raw, &e); err != nil {
				t.Fatalf("error body is not OpenAI-shaped JSON: %v: %s", err, raw)
			}
			if !strings.Contains(e.Error.Message, tc.contains) {
				t.Fatalf("message %q does not contain %q", e.Error.Message, tc.contains)
			}
			if e.Error.Type == "" {
				t.Fatalf("error type empty: %s", raw)
			}
			if tc.param != "" && (e.Error.Param == nil || *e.Error.Param != tc.param) {
				t.Fatalf("param = %v, want %q", e.Error.Param, tc.param)
			}
		})
	}
	// The process keeps serving after all of that.
	resp, err := http.Get(base + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz after bad inputs: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestModelsList(t *testing.T) {
	cfg := testConfig(t, []string{"http://127.0.0.1:1/v1"}, []string{"http://127.0.0.1:1/v1"})
	cfg.Routing.Aliases = []config.Alias{{Name: "cheap-or-best"}}
	_, base := startGateway(t, cfg, Options{})
	resp, err := http.Get(base + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Data []struct{ ID string } `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, m := range list.Data {
		got[m.ID] = true
	}
	for _, want := range []string{"auto", "cheap-or-best", "small", "large", "small-model", "large-model"} {
		if !got[want] {
			t.Errorf("/v1/models lacks %q: %v", want, got)
		}
	}
}
