package backends

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestValidJSON(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{}`, true}, {` {"a":[1,-2.5e+3,true,false,null,"x\u00e9\n"],"b":{}} `, true}, {`[]`, true},
		{`"s"`, true}, {`0`, true}, {`{"choices":[{"message":{"content":"hi"}}]}`, true},
		{``, false}, {`{`, false}, {`{"a"}`, false}, {`{"a":1,}`, false}, {`[1,]`, false}, {`[1 2]`, false},
		{`{"a":1}}`, false}, {`{"a":1} x`, false}, {`01`, false}, {`1.`, false}, {`-`, false}, {`1e`, false},
		{`"\x"`, false}, {`"\u12"`, false}, {"\"a\tb\"", false}, {`tru`, false}, {`{"a":[}`, false},
		{`[}`, false}, {`{]`, false}, {`{1:2}`, false}, {`<html>`, false}, {`data: {}`, false},
		{deep(maxJSONDepth), true}, {deep(maxJSONDepth + 1), false}, {deep(1 << 20), false},
	} {
		if got := validJSON([]byte(tc.in)); got != tc.ok {
			t.Errorf("validJSON(%.40q) = %v, want %v", tc.in, got, tc.ok)
		}
	}
}

func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{"a":[1,2,{"b":null}]}`, `[1,"x",-0.5e3]`, `{"a":}`, `"\u00zz"`, `[[[]]]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		depth, max := 0, 0
		for _, c := range b { // over-estimates depth (brackets in strings count): skip those inputs
			switch c {
			case '[', '{':
				depth++
				max = maxInt(max, depth)
			case ']', '}':
				depth--
			}
		}
		if max > maxJSONDepth {
			return
		}
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, encoding/json says %v", b, got, want)
		}
	})
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}
