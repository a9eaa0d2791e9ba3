package gateway

import (
	"bytes"
	"encoding/json"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// checkJSON bounds the work a body can ask of the parsers. In one pass over
// the bytes, without recursion, it rejects (400) a body whose arrays and
// objects nest deeper than maxDepth, before gjson or encoding/json see it
// (both recurse once a level: a few MB of "[" overflow the stack and kill
// the process), and a body whose top-level object repeats a key.
//
// A repeated key is ambiguous: gjson and encoding/json take the last
// "model", the rewrite for the upstream replaced the first, so a backend
// could see the name the client sent rather than the one routed to. Keys
// compare as decoded strings, and a case variant of a field the gateway
// reads counts as that field, since encoding/json matches field names
// case-insensitively.
//
// Anything else malformed is left to the parsers, which name the problem.
// The pass allocates nothing for requests of up to 16 top-level keys;
// beyond, a set of the keys, which point into body. More than
// maxTopLevelKeys keys are refused, so that set stays small whatever the
// body holds.
func checkJSON(body []byte, maxDepth int) error {
	var keys keySet
	depth := 0
	inTop := false   // inside the top-level object
	topDone := false // the top-level value has ended
	wantKey := false // the next string is a key of the top-level object
	for i := 0; i < len(body); i++ {
		switch body[i] {
		case '"':
			end := stringEnd(body, i+1)
			if end < 0 {
				return nil // unterminated: the parsers say so
			}
			if wantKey {
				if keys.len() == maxTopLevelKeys {
					return badRequest("", "the request body has more than %d top-level fields", maxTopLevelKeys)
				}
				if dup := keys.add(body[i+1 : end]); dup != "" {
					return badRequest(dup, "the request body has the key %q more than once; send each field once", dup)
				}
				wantKey = false
			}
			i = end
		case '{', '[':
			depth++
			if depth > maxDepth {
				return badRequest("", "request body nests arrays and objects deeper than max_json_depth (%d)", maxDepth)
			}
			wantKey = false
			if depth == 1 && !topDone && body[i] == '{' {
				inTop, wantKey = true, true
			}
		case '}', ']':
			depth--
			wantKey = false
			if depth <= 0 {
				if depth < 0 {
					return nil
				}
				inTop, topDone = false, true
			}
		case ',':
			wantKey = inTop && depth == 1
		}
	}
	return nil
}

// stringEnd returns the index of the quote closing the JSON string whose
// contents start at i, or -1.
func stringEnd(b []byte, i int) int {
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return -1
		}
		j += i
		k := j // an odd run of backslashes escapes the quote
		for k > i && b[k-1] == '\\' {
			k--
		}
		if (j-k)%2 == 0 {
			return j
		}
		i = j + 1
	}
}

// maxTopLevelKeys bounds the fields of a request object. OpenAI's chat
// completions request has about 40, servers such as vLLM add about 30.
const maxTopLevelKeys = 1024

// keySet holds the top-level keys seen so far.
type keySet struct {
	small [16]string
	n     int
	big   map[string]struct{}
}

func (s *keySet) len() int {
	if s.big != nil {
		return len(s.big)
	}
	return s.n
}

// add records a key (raw: between its quotes, escapes undecoded) and
// returns its decoded name if it was already there.
func (s *keySet) add(raw []byte) string {
	k := unsafeString(raw)
	if bytes.IndexByte(raw, '\\') >= 0 || !utf8.Valid(raw) { // decode as encoding/json does
		var dec string
		q := make([]byte, 0, len(raw)+2)
		q = append(append(append(q, '"'), raw...), '"')
		if json.Unmarshal(q, &dec) == nil {
			k = dec
		}
	}
	for _, f := range requestFields {
		// A case variant is never shorter and at most 3 bytes a letter.
		if len(k) >= len(f) && len(k) <= 3*len(f) && k != f && strings.EqualFold(k, f) {
			k = f
			break
		}
	}
	if s.big == nil {
		for _, seen := range s.small[:s.n] {
			if seen == k {
				return k
			}
		}
		if s.n < len(s.small) {
			s.small[s.n] = k
			s.n++
			return ""
		}
		s.big = make(map[string]struct{}, 2*len(s.small))
		for _, seen := range s.small {
			s.big[seen] = struct{}{}
		}
	}
	if _, ok := s.big[k]; ok {
		return k
	}
	s.big[k] = struct{}{}
	return ""
}

// unsafeString views b as a string without copying; b must not change
// while the string is in use (here: during checkJSON).
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
