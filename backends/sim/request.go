package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// maxBodyBytes bounds a request body; real prompts are far smaller, and a
// simulator should not be the one thing a test can make run out of memory.
const maxBodyBytes = 8 << 20

// request is the part of an OpenAI request the simulator reads; everything
// else (temperature, tools, stop, ...) is accepted and ignored.
type request struct {
	Model               string    `json:"model"`
	Messages            []message `json:"messages"`
	Prompt              prompt    `json:"prompt"`
	MaxTokens           *int      `json:"max_tokens"`
	MaxCompletionTokens *int      `json:"max_completion_tokens"`
	N                   *int      `json:"n"`
	Stream              bool      `json:"stream"`
	StreamOptions       struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Logprobs    logprobs `json:"logprobs"`
	TopLogprobs *int     `json:"top_logprobs"`
}

type message struct {
	Role    string  `json:"role"`
	Content content `json:"content"`
}

// content is a chat message's text: a string, or an array of parts whose
// "text" fields are joined; null is empty.
type content struct{ text string }

func (c *content) UnmarshalJSON(b []byte) error {
	switch {
	case len(b) == 0 || b[0] == 'n':
		c.text = ""
		return nil
	case b[0] == '"':
		if bytes.IndexByte(b, '\\') < 0 { // the common case needs no unescaping
			c.text = string(b[1 : len(b)-1])
			return nil
		}
		return json.Unmarshal(b, &c.text)
	case b[0] == '[':
		var parts []struct {
			Text string `json:"text"`
		}
		if err := json.Unmarshal(b, &parts); err != nil {
			return err
		}
		var sb []byte
		for i, p := range parts {
			if i > 0 {
				sb = append(sb, '\n')
			}
			sb = append(sb, p.Text...)
		}
		c.text = string(sb)
		return nil
	}
	return errors.New("message content must be a string or an array of content parts")
}

// prompt is a completions prompt: a string, an array of strings, or token
// ids (an array of integers or of integer arrays). tokens is set for ids.
type prompt struct {
	set    bool
	text   string
	tokens int
}

func (p *prompt) UnmarshalJSON(b []byte) error {
	if len(b) == 0 || b[0] == 'n' {
		return nil
	}
	p.set = true
	if b[0] == '"' {
		return json.Unmarshal(b, &p.text)
	}
	var strs []string
	if err := json.Unmarshal(b, &strs); err == nil {
		for i, s := range strs {
			if i > 0 {
				p.text += "\n"
			}
			p.text += s
		}
		return nil
	}
	var ids []json.RawMessage
	if err := json.Unmarshal(b, &ids); err != nil {
		return errors.New("prompt must be a string, an array of strings or an array of token ids")
	}
	for _, id := range ids {
		var one []int
		if err := json.Unmarshal(id, &one); err == nil {
			p.tokens += len(one)
		} else {
			p.tokens++
		}
	}
	p.text = string(b) // ids hash like text
	return nil
}

// logprobs is chat's boolean or completions' integer logprobs field.
type logprobs struct {
	set     bool // true, or an integer
	boolean bool // written as true or false
	n       int
}

func (l *logprobs) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case "null":
		return nil
	case "false":
		l.boolean = true
		return nil
	case "true":
		l.set, l.boolean = true, true
		return nil
	}
	n, err := strconv.Atoi(string(b))
	if err != nil {
		return errors.New("logprobs must be a boolean (chat) or an integer (completions)")
	}
	l.set, l.n = true, n
	return nil
}

// maxChoices is the most choices (n) a request may ask for.
const maxChoices = 16

// badRequest is a request the simulator refuses, in OpenAI's error shape.
type badRequest struct {
	status     int
	param, msg string
}

func invalid(param, msg string) *badRequest {
	return &badRequest{status: http.StatusBadRequest, param: param, msg: msg}
}

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// decode reads and checks r's body; it returns nil or what to answer. The
// checks and their messages follow vLLM's.
func decode(r *http.Request, req *request, chat bool) *badRequest {
	buf := bodyPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 64<<10 {
			bodyPool.Put(buf)
		}
	}()
	if _, err := buf.ReadFrom(io.LimitReader(r.Body, maxBodyBytes+1)); err != nil {
		return invalid("", "could not read the request body: "+err.Error())
	}
	if buf.Len() > maxBodyBytes {
		return &badRequest{status: http.StatusRequestEntityTooLarge,
			msg: "request body is larger than " + strconv.Itoa(maxBodyBytes) + " bytes: send a shorter prompt"}
	}
	if err := json.Unmarshal(buf.Bytes(), req); err != nil {
		return invalid("", "request body is not valid JSON for this endpoint: "+err.Error())
	}
	if chat && len(req.Messages) == 0 {
		return invalid("messages", "'messages' is required and must be a non-empty array of {\"role\",\"content\"} objects")
	}
	if !chat && !req.Prompt.set {
		return invalid("prompt", "'prompt' is required: a string, an array of strings or token ids")
	}
	if m := req.MaxTokens; m != nil && *m < 1 {
		return invalid("max_tokens", "max_tokens must be at least 1, got "+strconv.Itoa(*m))
	}
	if m := req.MaxCompletionTokens; m != nil && *m < 1 {
		return invalid("max_completion_tokens", "max_completion_tokens must be at least 1, got "+strconv.Itoa(*m))
	}
	if n := req.N; n != nil && (*n < 1 || *n > maxChoices) {
		return invalid("n", "n must be between 1 and "+strconv.Itoa(maxChoices)+", got "+strconv.Itoa(*n))
	}
	lp := &req.Logprobs
	if chat {
		if lp.set && !lp.boolean {
			return invalid("logprobs", "logprobs must be a boolean for chat completions; ask for alternatives with top_logprobs")
		}
		if k := req.TopLogprobs; k != nil {
			if *k < 0 || *k > maxTopLogprobs {
				return invalid("top_logprobs", "top_logprobs must be between 0 and "+strconv.Itoa(maxTopLogprobs)+", got "+strconv.Itoa(*k))
			}
			if *k > 0 && !lp.set {
				return invalid("top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true")
			}
		}
		return nil
	}
	if lp.boolean {
		return invalid("logprobs", "logprobs must be an integer between 0 and "+strconv.Itoa(maxTopLogprobs)+" for completions")
	}
	if lp.n < 0 || lp.n > maxTopLogprobs {
		return invalid("logprobs", "logprobs must be between 0 and "+strconv.Itoa(maxTopLogprobs)+", got "+strconv.Itoa(lp.n))
	}
	return nil
}
