package sim

import (
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Header values shared by every reply; net/http only reads them.
var (
	jsonContentType  = []string{"application/json"}
	sseContentType   = []string{"text/event-stream; charset=utf-8"}
	htmlContentType  = []string{"text/html; charset=utf-8"}
	noCache          = []string{"no-cache"}
	promContentType  = []string{"text/plain; version=0.0.4; charset=utf-8"}
	noSniffHeaderVal = []string{"nosniff"}
)

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, quotes included.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func appendInt[T ~int | ~int64](b []byte, v T) []byte {
	return strconv.AppendInt(b, int64(v), 10)
}

// appendByteList appends s's bytes as a JSON array of integers (the
// "bytes" field of chat logprobs).
func appendByteList(b []byte, s string) []byte {
	b = append(b, '[')
	for i := 0; i < len(s); i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(s[i]), 10)
	}
	return append(b, ']')
}

// errorKind names the OpenAI error type and code for a status.
func errorKind(status int) (typ, code string) {
	switch status {
	case http.StatusBadRequest:
		return "invalid_request_error", "bad_request"
	case http.StatusUnauthorized:
		return "authentication_error", "invalid_api_key"
	case http.StatusForbidden:
		return "permission_error", "forbidden"
	case http.StatusNotFound:
		return "not_found_error", "not_found"
	case http.StatusMethodNotAllowed:
		return "invalid_request_error", "method_not_allowed"
	case http.StatusRequestEntityTooLarge:
		return "invalid_request_error", "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error", "rate_limit_exceeded"
	case http.StatusServiceUnavailable:
		return "server_error", "service_unavailable"
	case http.StatusGatewayTimeout:
		return "server_error", "timeout"
	}
	if status >= 500 {
		return "server_error", "internal_error"
	}
	return "invalid_request_error", "error"
}

// writeError answers with status and OpenAI's error shape; param names the
// request field at fault ("": null).
func writeError(w http.ResponseWriter, status int, param, msg string) {
	typ, code := errorKind(status)
	b := make([]byte, 0, 96+len(param)+len(msg))
	b = append(b, `{"error":{"message":`...)
	b = appendString(b, msg)
	b = append(b, `,"type":"`...)
	b = append(b, typ...)
	b = append(b, `","param":`...)
	if param == "" {
		b = append(b, "null"...)
	} else {
		b = appendString(b, param)
	}
	b = append(b, `,"code":"`...)
	b = append(b, code...)
	b = append(b, `"}}`...)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Content-Type-Options"] = noSniffHeaderVal
	w.WriteHeader(status)
	w.Write(b)
}

// escapeLabel escapes a Prometheus label value.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}
