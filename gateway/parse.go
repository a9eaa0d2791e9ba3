package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tidwall/gjson"

	"github.com/cascade-gateway/cascade/router"
)

// request is what the gateway needs to know of a completion request. The
// original bytes are forwarded; this is parsed once to route and validate.
//
// Model and the roles are copies. The messages' contents may share the
// body's memory (fasthttp's buffer, reused after the handler returns), so
// that a request costs one body and not two: they are valid only while the
// handler runs; anything that keeps them longer (a span attribute, an
// asynchronous job) copies them first.
type request struct {
	Model    string
	Stream   bool
	Chat     bool
	Input    router.Input
	Messages []router.Message
	// IncludeUsage is the client's stream_options.include_usage.
	IncludeUsage bool
}

// rawJSON is a JSON value as a view of the body being parsed: unlike
// json.RawMessage it does not copy (encoding/json hands UnmarshalJSON a
// slice of the input, and the input, the request body, outlives the
// parse), so the strict path, too, costs no second body.
type rawJSON []byte

// UnmarshalJSON keeps b.
func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = b
	return nil
}

type wireMessage struct {
	Role    string  `json:"role"`
	Content rawJSON `json:"content"`
}

type wireRequest struct {
	Model               *string `json:"model"`
	Messages            rawJSON `json:"messages"`
	Prompt              rawJSON `json:"prompt"`
	Stream              *bool   `json:"stream"`
	MaxTokens           *int    `json:"max_tokens"`
	MaxCompletionTokens *int    `json:"max_completion_tokens"`
	Tools               rawJSON `json:"tools"`
	Functions           rawJSON `json:"functions"`
	ResponseFormat      rawJSON `json:"response_format"`
}

// parseRequest validates a chat (chat=true) or legacy completions body.
// checkJSON first bounds its nesting to maxDepth and rejects repeated
// top-level keys. A well-formed request takes the fast path; anything the
// fast path does not accept as it stands (malformed JSON, a wrong type, a
// missing field, a key spelled in another case) is parsed again by
// parseStrict, which is the reference for both the result and the error
// messages.
func parseRequest(body []byte, chat bool, maxDepth int) (*request, error) {
	if err := checkJSON(body, maxDepth); err != nil {
		return nil, err
	}
	if r, ok := parseFast(body, chat); ok {
		return r, nil
	}
	return parseStrict(body, chat)
}

// parseStrict validates a body with encoding/json and names what is wrong.
func parseStrict(body []byte, chat bool) (*request, error) {
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
	r.IncludeUsage = gjson.GetBytes(body, "stream_options.include_usage").Bool()
	return r, nil
}

func isSet(raw rawJSON) bool {
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}

func (r *request) parseMessages(raw rawJSON) error {
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
func contentText(raw rawJSON) (string, error) {
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
		return partsText(gjson.ParseBytes(raw))
	}
	return "", errors.New("must be a string or an array of content parts")
}

// partsText joins the text parts of a content array.
func partsText(parts gjson.Result) (string, error) {
	var sb strings.Builder
	var bad error
	parts.ForEach(func(_, part gjson.Result) bool {
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

func (r *request) parsePrompt(raw rawJSON) error {
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

// Field names of a request and of a message, for parseFast.
var (
	requestFields = [...]string{"model", "messages", "prompt", "stream", "max_tokens",
		"max_completion_tokens", "tools", "functions", "response_format"}
	messageFields = [...]string{"role", "content"}
)

// foldsToAny reports whether key is a case variant of one of names, which
// encoding/json would match (it matches field names case-insensitively).
func foldsToAny(key string, names []string) bool {
	for _, n := range names {
		// A case variant is never shorter and at most 3 bytes a letter.
		if len(key) >= len(n) && len(key) <= 3*len(n) && strings.EqualFold(key, n) {
			return true
		}
	}
	return false
}

// parseFast parses a well-formed request with gjson: one validation pass and
// one walk, no reflection. It returns ok=false for anything it does not take
// as it stands, leaving the verdict (and the error message) to parseStrict,
// whose result it reproduces exactly on what it accepts. FuzzParse checks
// that the two agree.
func parseFast(body []byte, chat bool) (*request, bool) {
	if !gjson.ValidBytes(body) {
		return nil, false
	}
	// No copy of the body: a string without escapes is a view of it, one
	// with escapes gjson's unescaped copy. What may outlive the handler is
	// cloned below (see request).
	root := gjson.Parse(unsafeString(body))
	if !root.IsObject() {
		return nil, false
	}
	r := &request{Chat: chat}
	var messages, prompt gjson.Result
	var maxTokens, maxCompletion *int64
	var hasModel, hasUsage, tools, functions bool
	var mt, mct int64
	ok := true
	root.ForEach(func(k, v gjson.Result) bool {
		key := k.Str // unescaped
		switch key {
		case "model":
			if v.Type != gjson.String {
				ok = false
			} else {
				r.Model, hasModel = strings.Clone(v.Str), true
				if !plainString(v) {
					ok = false
				}
			}
		case "messages":
			messages = v
		case "prompt":
			prompt = v
		case "stream":
			switch v.Type {
			case gjson.True, gjson.False:
				r.Stream = v.Type == gjson.True
			case gjson.Null:
				r.Stream = false
			default:
				ok = false
			}
		case "max_tokens", "max_completion_tokens":
			var p **int64
			var n *int64
			if key == "max_tokens" {
				p, n = &maxTokens, &mt
			} else {
				p, n = &maxCompletion, &mct
			}
			switch v.Type {
			case gjson.Null:
				*p = nil
			case gjson.Number:
				i, err := strconv.ParseInt(v.Raw, 10, 64)
				if err != nil || i < 0 {
					ok = false
				}
				*n, *p = i, n
			default:
				ok = false
			}
		case "tools": // the last one counts, as with encoding/json
			tools = v.Type != gjson.Null
		case "functions":
			functions = v.Type != gjson.Null
		case "response_format":
			r.Input.HasResponseFormat = v.Type != gjson.Null
		case "stream_options":
			if !hasUsage { // the first one, as a gjson path lookup finds
				hasUsage = true
				r.IncludeUsage = v.Get("include_usage").Bool()
			}
		default:
			if foldsToAny(key, requestFields[:]) {
				ok = false
			}
		}
		return ok
	})
	if !ok || !hasModel || r.Model == "" {
		return nil, false
	}
	r.Input.HasTools = tools || functions
	if maxTokens != nil {
		r.Input.MaxTokens = int(*maxTokens)
	} else if maxCompletion != nil {
		r.Input.MaxTokens = int(*maxCompletion)
	}
	if chat {
		ok = r.fastMessages(messages)
	} else {
		ok = r.fastPrompt(prompt)
	}
	if !ok {
		return nil, false
	}
	r.Input.Messages = r.Messages
	return r, true
}

func (r *request) fastMessages(msgs gjson.Result) bool {
	if !msgs.IsArray() {
		return false
	}
	r.Messages = make([]router.Message, 0, 8)
	ok := true
	msgs.ForEach(func(_, m gjson.Result) bool {
		if !m.IsObject() {
			ok = false
			return false
		}
		var role, content string
		m.ForEach(func(k, v gjson.Result) bool {
			switch key := k.Str; key {
			case "role":
				if v.Type != gjson.String || !plainString(v) {
					ok = false
				}
				role = cloneRole(v.Str)
			case "content":
				switch {
				case v.Type == gjson.Null:
					content = ""
				case v.Type == gjson.String && plainString(v):
					content = v.Str
				case v.IsArray():
					text, err := partsText(v)
					if err != nil {
						ok = false
					}
					content = text
				default:
					ok = false
				}
			default:
				if foldsToAny(key, messageFields[:]) {
					ok = false
				}
			}
			return ok
		})
		if role == "" {
			ok = false
		}
		r.Messages = append(r.Messages, router.Message{Role: role, Content: content})
		return ok
	})
	return ok && len(r.Messages) > 0
}

func (r *request) fastPrompt(p gjson.Result) bool {
	var text string
	switch {
	case p.Type == gjson.String && plainString(p):
		text = p.Str
	case p.IsArray():
		var sb strings.Builder
		ok := true
		i := 0
		p.ForEach(func(_, v gjson.Result) bool {
			if i > 0 {
				sb.WriteByte('\n')
			}
			i++
			switch {
			case v.Type == gjson.Null:
			case v.Type == gjson.String && plainString(v):
				sb.WriteString(v.Str)
			default:
				ok = false
			}
			return ok
		})
		if !ok {
			return false
		}
		text = sb.String()
	default:
		return false
	}
	r.Messages = []router.Message{{Role: "user", Content: text}}
	return true
}

// cloneRole copies a role, without allocating for the usual ones.
func cloneRole(s string) string {
	switch s {
	case "system":
		return "system"
	case "user":
		return "user"
	case "assistant":
		return "assistant"
	case "tool":
		return "tool"
	case "developer":
		return "developer"
	}
	return strings.Clone(s)
}

// plainString reports whether gjson's reading of a string value is exactly
// encoding/json's: they differ on invalid UTF-8, which encoding/json
// replaces with U+FFFD and gjson keeps. (Escaped UTF-16 surrogates, paired
// or not, decode the same in both; FuzzParse checks it.)
func plainString(v gjson.Result) bool {
	return utf8.ValidString(v.Str)
}
