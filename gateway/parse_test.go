package gateway

import (
	"reflect"
	"strings"
	"testing"
)

// parseCorpus holds well-formed requests the fast path should take and
// tricky ones where it must step aside for the strict parser.
var parseCorpus = []string{
	`{"model":"auto","messages":[{"role":"user","content":"hi"}]}`,
	`{"model":"auto","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`,
	`{"model":"auto","stream":null,"max_tokens":null,"max_completion_tokens":12,"messages":[{"role":"user","content":null}]}`,
	`{"model":"auto","max_tokens":7,"max_completion_tokens":-1,"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"auto","max_tokens":1.0,"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"auto","max_tokens":1e3,"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"auto","max_tokens":-0,"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"auto","max_tokens":99999999999999999999,"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"auto","tools":[{"type":"function"}],"tools":null,"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"auto","functions":[],"response_format":{"type":"json_object"},"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"auto","response_format":null,"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"a","model":"b","messages":[{"role":"user","content":"x"}]}`,
	`{"model":"a","model":null,"messages":[{"role":"user","content":"x"}]}`,
	`{"Model":"a","messages":[{"role":"user","content":"x"}]}`,
	`{"model":"a","MESSAGES":[{"role":"user","content":"x"}],"messages":[{"role":"user","content":"y"}]}`,
	`{"model":"a","ſtream":true,"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"a","messages":[{"Role":"user","content":"x"}]}`,
	`{"model":"a","messages":[{"role":"user","role":"system","content":"x","content":"yy"}]}`,
	`{"model":"a","messages":[{"role":"user","content":"x"},null]}`,
	`{"model":"a","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"b"}]}]}`,
	`{"model":"a","messages":[{"role":"user","content":[{"text":"a"}]}]}`,
	`{"model":"a","messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00 \ud800 x \udc00 \ud800\u0041"}]}`,
	`{"model":"a","messages":[{"role":"user","content":"tab\tquote\" back\\ slash\/"}]}`,
	"{\"model\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"bad \xff utf8\"}]}",
	"{\"model\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"ctl \x01\"}]}",
	`{"mod\u0065l":"a","messages":[{"role":"user","content":"x"}]}`,
	`{"model":"a","messages":[{"role":"user","content":"x"}]} `,
	`{"model":"a","messages":[{"role":"user","content":"x"}]} {}`,
	`{"model":"a","messages":[{"role":"user","content":"x"}],}`,
	`{"model":"a","messages":[]}`,
	`{"model":"","messages":[{"role":"user","content":"x"}]}`,
	`{"model":"a","messages":[{"role":"","content":"x"}]}`,
	`{"model":"a","messages":[{"role":"user","content":5}]}`,
	`{"model":"a","messages":"hi"}`,
	`{"model":"a","stream":"yes","messages":[{"role":"user","content":"x"}]}`,
	`{"model":"a","stream_options":{"include_usage":true},"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"a","prompt":"once upon"}`,
	`{"model":"a","prompt":["a",null,"b"]}`,
	`{"model":"a","prompt":["a",1]}`,
	`{"model":"a","prompt":{"a":1}}`,
	`{"model":"a","prompt":null}`,
	`[1,2]`,
	`"str"`,
	``,
	`   `,
	`{"model":"auto","messages":[`,
	`{"model":01,"messages":[]}`,
	"\ufeff{\"model\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
}

// checkParse fails if the fast path accepts a body and does not produce
// exactly what the strict parser does.
func checkParse(t *testing.T, body []byte, chat bool) {
	t.Helper()
	fast, ok := parseFast(body, chat)
	if !ok {
		return
	}
	strict, err := parseStrict(body, chat)
	if err != nil {
		t.Fatalf("fast path accepted what the strict parser rejects (%v): %q", err, body)
	}
	if !reflect.DeepEqual(fast, strict) {
		t.Fatalf("fast and strict parses differ for %q:\nfast   %+v\nstrict %+v", body, fast, strict)
	}
}

func TestParseFastMatchesStrict(t *testing.T) {
	accepted := 0
	for _, body := range parseCorpus {
		for _, chat := range []bool{true, false} {
			checkParse(t, []byte(body), chat)
			if _, ok := parseFast([]byte(body), chat); ok {
				accepted++
			}
		}
	}
	// The fast path must actually be taken for ordinary requests.
	for _, body := range [][]byte{benchChatBody(1<<10, false), benchChatBody(8<<10, true),
		[]byte(`{"model":"auto","messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00"}]}`)} {
		if _, ok := parseFast(body, true); !ok {
			t.Fatalf("fast path refused an ordinary request: %.200s", body)
		}
	}
	if accepted < 10 {
		t.Fatalf("fast path took only %d of the corpus", accepted)
	}
}

func FuzzParse(f *testing.F) {
	for _, body := range parseCorpus {
		f.Add([]byte(body), true)
	}
	f.Add([]byte(`{"model":"a","prompt":"x"}`), false)
	f.Fuzz(func(t *testing.T, body []byte, chat bool) {
		checkParse(t, body, chat)
	})
}

func TestParseStreamOptions(t *testing.T) {
	for _, tc := range []struct {
		body string
		want bool
	}{
		{`{"model":"a","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}`, true},
		{`{"model":"a","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"x"}]}`, false},
		{`{"model":"a","stream":true,"messages":[{"role":"user","content":"x"}]}`, false},
		{`{"model":"a","stream":true,"stream_options":{"include_usage":true},"MAX_TOKENS":5,"messages":[{"role":"user","content":"x"}]}`, true},
	} {
		r, err := parseRequest([]byte(tc.body), true, 64)
		if err != nil {
			t.Fatal(err)
		}
		if r.IncludeUsage != tc.want || !strings.Contains(tc.body, `"stream":true`) != !r.Stream {
			t.Fatalf("%s: include_usage %v stream %v", tc.body, r.IncludeUsage, r.Stream)
		}
	}
}

func TestParseSurrogates(t *testing.T) {
	for _, s := range []string{`\ud83d\ude00`, `\ud800`, `\udc00`, `\ud800\u0041`, `\ud800x`, `\ud83d\ud83d\ude00`, `\uDBFF\uDFFF`, `\ud800\\u0041`, `x\ud800`} {
		body := []byte(`{"model":"a","messages":[{"role":"user","content":"` + s + `"}]}`)
		if _, ok := parseFast(body, true); !ok {
			t.Fatalf("fast path refused %s", s)
		}
		checkParse(t, body, true)
	}
}
