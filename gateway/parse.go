package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/cascade-gateway/cascade/router"
)

// request is what the gateway needs to know of a completion request. The
// original bytes are forwarded; this is parsed once to route and validate.
type request struct {
	Model    string
	Stream   bool
	Chat     bool
	Input    router.Input
	Messages []router.Message
}

type wireMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type wireRequest struct {
	Model               *string         `json:"model"`
	Messages            json.RawMessage `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Stream              *bool           `json:"stream"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Tools               json.RawMessage `json:"tools"`
	Functions           json.RawMessage `json:"functions"`
	ResponseFormat      json.RawMessage `json:"response_format"`
}

// parseRequest validates a chat (chat=true) or legacy completions body.
func parseRequest(body []byte, chat bool) (*request, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, badRequest("", "request body is empty; send a JSON object")
	}
	var w wireRequest
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, jsonError(err)
	}
	r := &request{Chat: chat}
	if w.Model == nil || *w.Model == "" {
		return nil, badRequest("model", "'model' is required: use \"auto\" to let the cascade choose, or a tier or model name from GET /v1/models")
	}
	r.Model = *w.Model
	if w.Stream != nil {
		r.Stream = *w.Stream
	}
	if w.MaxTokens != nil {
		r.Input.MaxTokens = *w.MaxTokens
	} else if w.MaxCompletionTokens != nil {
		r.Input.MaxTokens = *w.MaxCompletionTokens
	}
	if r.Input.MaxTokens < 0 {
		return nil, badRequest("max_tokens", "'max_tokens' must not be negative, got %d", r.Input.MaxTokens)
	}
	r.Input.HasTools = isSet(w.Tools) || isSet(w.Functions)
	r.Input.HasResponseFormat = isSet(w.ResponseFormat)
	var err error
	if chat {
		err = r.parseMessages(w.Messages)
	} else {
		err = r.parsePrompt(w.Prompt)
	}
	if err != nil {
		return nil, err
	}
	r.Input.Messages = r.Messages
	return r, nil
}

func isSet(raw json.RawMessage) bool {
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}

func (r *request) parseMessages(raw json.RawMessage) error {
	if !isSet(raw) {
		return badRequest("messages", "'messages' is required and must be a non-empty array of {role, content} objects")
	}
	var msgs []wireMessage
	if err := json.Unmarshal(raw, &msgs); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field == "" {
			return badRequest("messages", "'messages' must be an array, got %s", te.Value)
		}
		return jsonError(prefixField(err, "messages"))
	}
	if len(msgs) == 0 {
		return badRequest("messages", "'messages' must contain at least one message")
	}
	r.Messages = make([]router.Message, len(msgs))
	for i, m := range msgs {
		if m.Role == "" {
			return badRequest(fmt.Sprintf("messages[%d].role", i), "'messages[%d].role' is required (system, user, assistant, tool)", i)
		}
		text, err := contentText(m.Content)
		if err != nil {
			return badRequest(fmt.Sprintf("messages[%d].content", i), "'messages[%d].content' %s", i, err)
		}
		r.Messages[i] = router.Message{Role: m.Role, Content: text}
	}
	return nil
}

// contentText flattens a message's content: a string, null, or an array of
// parts whose text parts are joined.
func contentText(raw json.RawMessage) (string, error) {
	if !isSet(raw) {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", errors.New("is not a valid JSON string")
		}
		return s, nil
	case '[':
		if !gjson.ValidBytes(raw) {
			return "", errors.New("is not valid JSON")
		}
		var sb strings.Builder
		var bad error
		gjson.ParseBytes(raw).ForEach(func(_, part gjson.Result) bool {
			if !part.IsObject() || !part.Get("type").Exists() {
				bad = errors.New("parts must be objects with a 'type'")
				return false
			}
			if t := part.Get("text"); t.Exists() {
				if sb.Len() > 0 {
					sb.WriteByte('\n')
				}
				sb.WriteString(t.String())
			}
			return true
		})
		return sb.String(), bad
	}
	return "", errors.New("must be a string or an array of content parts")
}

func (r *request) parsePrompt(raw json.RawMessage) error {
	if !isSet(raw) {
		return badRequest("prompt", "'prompt' is required: a string or an array of strings")
	}
	var text string
	switch raw[0] {
	case '"':
		if err := json.Unmarshal(raw, &text); err != nil {
			return badRequest("prompt", "'prompt' is not a valid JSON string")
		}
	case '[':
		var parts []string
		if err := json.Unmarshal(raw, &parts); err != nil {
			return badRequest("prompt", "'prompt' must be a string or an array of strings")
		}
		text = strings.Join(parts, "\n")
	default:
		return badRequest("prompt", "'prompt' must be a string or an array of strings")
	}
	r.Messages = []router.Message{{Role: "user", Content: text}}
	return nil
}

type fieldErr struct {
	field string
	err   error
}

func (f fieldErr) Error() string { return f.err.Error() }
func (f fieldErr) Unwrap() error { return f.err }

func prefixField(err error, field string) error { return fieldErr{field, err} }

// jsonError names what was wrong with the JSON.
func jsonError(err error) *apiError {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var fe fieldErr
	prefix := ""
	if errors.As(err, &fe) {
		prefix = fe.field
	}
	switch {
	case errors.As(err, &se):
		return badRequest("", "request body is not valid JSON: %s at byte %d", se.Error(), se.Offset)
	case errors.As(err, &te):
		field := te.Field
		if prefix != "" {
			field = prefix + "." + field
		}
		if field == "" {
			return badRequest("", "request body must be a JSON object, got %s", te.Value)
		}
		return badRequest(field, "'%s' must be of type %s, got %s", field, jsonType(te.Type.Kind().String()), te.Value)
	}
	return badRequest("", "request body is not valid JSON: %s", err.Error())
}

func jsonType(kind string) string {
	switch kind {
	case "int", "int64", "float64":
		return "number"
	case "ptr":
		return "the documented type"
	case "slice":
		return "array"
	case "struct", "map":
		return "object"
	case "bool":
		return "boolean"
	}
	return kind
}

func jsonString(body []byte, path string) string {
	return gjson.GetBytes(body, path).String()
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}
