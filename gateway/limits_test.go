package gateway

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// nestedBomb writes the body of the gzip-bomb report: a valid request
// whose extra field "x" is depth "["s then depth "]"s.
func nestedBomb(w io.Writer, depth int) {
	io.WriteString(w, `{"model":"auto","messages":[{"role":"user","content":"hi"}],"x":`)
	chunk := bytes.Repeat([]byte("["), 64<<10)
	for n := depth; n > 0; n -= len(chunk) {
		w.Write(chunk[:min(n, len(chunk))])
	}
	chunk = bytes.Repeat([]byte("]"), 64<<10)
	for n := depth; n > 0; n -= len(chunk) {
		w.Write(chunk[:min(n, len(chunk))])
	}
	io.WriteString(w, "}")
}

func compress(t testing.TB, enc string, write func(io.Writer)) []byte {
	t.Helper()
	var b bytes.Buffer
	var w io.WriteCloser
	switch enc {
	case "gzip":
		w, _ = gzip.NewWriterLevel(&b, gzip.BestCompression)
	case "deflate":
		w, _ = zlib.NewWriterLevel(&b, zlib.BestCompression)
	case "raw-deflate":
		w, _ = flate.NewWriter(&b, flate.BestCompression)
	case "br":
		w = brotli.NewWriterLevel(&b, brotli.BestCompression)
	default:
		t.Fatalf("unknown encoding %s", enc)
	}
	write(w)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// postRaw posts body with the given Content-Encoding and returns the
// status and the decoded OpenAI error, if any.
func postRaw(t *testing.T, url, enc string, body []byte) (int, apiError) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if enc != "" {
		req.Header.Set("Content-Encoding", enc)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var e struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	var ae apiError
	if resp.StatusCode != 200 {
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("status %d with a body that is no OpenAI error: %s", resp.StatusCode, raw)
		}
		ae = apiError{Status: resp.StatusCode, Type: e.Error.Type, Message: e.Error.Message}
		if e.Error.Param != nil {
			ae.Param = *e.Error.Param
		}
		if e.Error.Code != nil {
			ae.Code = *e.Error.Code
		}
	}
	return resp.StatusCode, ae
}

// The report's 15 KB gzip body inflates to 16 MB of nesting: it used to
// exhaust memory and overflow the stack. It must be refused within a second,
// and the gateway must go on serving.
func TestGzipBombRefused(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	bomb := compress(t, "gzip", func(w io.Writer) { nestedBomb(w, 8_000_000) })
	if len(bomb) > 32<<10 {
		t.Fatalf("bomb is %d bytes, want about 15 KB", len(bomb))
	}
	start := time.Now()
	status, e := postRaw(t, base+"/v1/chat/completions", "gzip", bomb)
	took := time.Since(start)
	t.Logf("%d-byte gzip bomb refused in %v", len(bomb), took)
	if took > time.Second {
		t.Fatalf("took %v to refuse a %d-byte bomb", took, len(bomb))
	}
	if status != 413 || !strings.Contains(e.Message, "max_body_bytes") {
		t.Fatalf("status %d %+v, want 413 naming max_body_bytes", status, e)
	}
	// The same nesting uncompressed but within the size limit: 400, fast.
	var plain bytes.Buffer
	nestedBomb(&plain, 2_000_000)
	start = time.Now()
	status, e = postRaw(t, base+"/v1/chat/completions", "", plain.Bytes())
	if took := time.Since(start); took > time.Second || status != 400 || !strings.Contains(e.Message, "max_json_depth (64)") {
		t.Fatalf("4 MB of nesting: %d %+v after %v, want a fast 400 naming max_json_depth (64)", status, e, took)
	}
	status, e = postRaw(t, base+"/v1/chat/completions", "", []byte(`{"model":"small","messages":[{"role":"user","content":"hi"}]}`))
	if status != 200 {
		t.Fatalf("gateway no longer serves after the bomb: %d %+v", status, e)
	}
}

func TestContentEncoding(t *testing.T) {
	_, smallURL := simServer(t, sim.Config{Model: "small-model"})
	cfg := testConfig(t, []string{smallURL}, []string{smallURL})
	cfg.MaxBodyBytes = 64 << 10
	_, base := startGateway(t, cfg, Options{})
	ok := []byte(`{"model":"small","messages":[{"role":"user","content":"hi"}]}`)
	okWith := func(enc string) []byte { return compress(t, enc, func(w io.Writer) { w.Write(ok) }) }
	// Just over the limit once inflated, tiny compressed.
	over := func(enc string) []byte {
		return compress(t, enc, func(w io.Writer) {
			io.WriteString(w, `{"model":"small","messages":[{"role":"user","content":"`+strings.Repeat("a", 64<<10)+`"}]}`)
		})
	}
	// A bomb whose gzip trailer understates its size is still stopped by
	// the cap while inflating.
	liar := over("gzip")
	copy(liar[len(liar)-4:], []byte{10, 0, 0, 0})
	for _, tc := range []struct {
		name, enc string
		body      []byte
		status    int
		contains  string
	}{
		{"gzip", "gzip", okWith("gzip"), 200, ""},
		{"x-gzip", "x-gzip", okWith("gzip"), 200, ""},
		{"deflate (zlib)", "deflate", okWith("deflate"), 200, ""},
		{"deflate (raw)", "deflate", okWith("raw-deflate"), 200, ""},
		{"br", "br", okWith("br"), 200, ""},
		{"identity", "identity", ok, 200, ""},
		{"upper case", "GZIP", okWith("gzip"), 200, ""},
		{"gzip over the limit", "gzip", over("gzip"), 413, "max_body_bytes (65536 bytes)"},
		{"gzip understating its size", "gzip", liar, 413, "max_body_bytes"},
		{"br over the limit", "br", over("br"), 413, "max_body_bytes"},
		{"deflate over the limit", "deflate", over("deflate"), 413, "max_body_bytes"},
		{"unsupported", "zstd", ok, 415, `Content-Encoding "zstd" is not supported`},
		{"stacked", "gzip, br", ok, 415, `only one content coding`},
		{"corrupt gzip", "gzip", []byte("not gzip at all"), 400, "could not be inflated as gzip"},
		{"truncated gzip", "gzip", okWith("gzip")[:20], 400, "could not be inflated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, e := postRaw(t, base+"/v1/chat/completions", tc.enc, tc.body)
			if status != tc.status || !strings.Contains(e.Message, tc.contains) {
				t.Fatalf("status %d %+v, want %d containing %q", status, e, tc.status, tc.contains)
			}
		})
	}
}

// The dry run (/admin/route) reads bodies the same way.
func TestAdminRouteBounded(t *testing.T) {
	cfg := testConfig(t, []string{"http://127.0.0.1:1/v1"}, []string{"http://127.0.0.1:1/v1"})
	tok := adminToken(t, cfg)
	_, base := startGateway(t, cfg, Options{})
	var body bytes.Buffer
	nestedBomb(&body, 100_000)
	req, _ := http.NewRequest(http.MethodPost, base+"/admin/route", &body)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(raw), "max_json_depth") {
		t.Fatalf("%d %s", resp.StatusCode, raw)
	}
}

func TestRequestLimits(t *testing.T) {
	cfg := testConfig(t, []string{"http://127.0.0.1:1/v1"}, []string{"http://127.0.0.1:1/v1"})
	cfg.MaxJSONDepth = 8
	_, base := startGateway(t, cfg, Options{})
	nest := func(d int) string { return strings.Repeat("[", d) + strings.Repeat("]", d) }
	for _, tc := range []struct {
		name, body string
		status     int
		param      string
		contains   string
	}{
		// The request object is level 1, so "x" may hold 7 levels.
		{"depth at the limit", `{"model":"nope","x":` + nest(7) + `,"messages":[{"role":"user","content":"hi"}]}`, 404, "model", "does not exist"},
		{"depth over the limit", `{"model":"nope","x":` + nest(8) + `,"messages":[{"role":"user","content":"hi"}]}`, 400, "", "max_json_depth (8)"},
		{"brackets in strings do not count", `{"model":"nope","x":"` + nest(50) + `","messages":[{"role":"user","content":"[[[[[[[[[[\"{{{{{{{{{{"}]}`, 404, "model", "does not exist"},
		{"duplicate model", `{"model":"small","model":"large","messages":[{"role":"user","content":"hi"}]}`, 400, "model", `key "model" more than once`},
		{"duplicate model, case variant", `{"model":"small","Model":"large","messages":[{"role":"user","content":"hi"}]}`, 400, "model", `key "model"`},
		{"duplicate messages, case variant", `{"model":"small","MESSAGES":[{"role":"user","content":"hard"}],"messages":[{"role":"user","content":"hi"}]}`, 400, "messages", `key "messages"`},
		{"duplicate model, escaped", `{"model":"small","mod\u0065l":"large","messages":[{"role":"user","content":"hi"}]}`, 400, "model", `key "model"`},
		{"duplicate unknown key", `{"model":"small","temperature":1,"temperature":0,"messages":[{"role":"user","content":"hi"}]}`, 400, "temperature", `key "temperature"`},
		{"nested duplicates are the upstream's business", `{"model":"nope","messages":[{"role":"user","role":"user","content":"hi"}],"x":{"a":1,"a":2}}`, 404, "model", "does not exist"},
		{"many distinct keys", `{"model":"nope",` + manyKeys(40, false) + `"messages":[{"role":"user","content":"hi"}]}`, 404, "model", "does not exist"},
		{"too many keys", `{"model":"nope",` + manyKeys(1100, false) + `"messages":[{"role":"user","content":"hi"}]}`, 400, "", "more than 1024 top-level fields"},
		{"many keys, one repeated", `{"model":"nope",` + manyKeys(40, true) + `"messages":[{"role":"user","content":"hi"}]}`, 400, "k7", `key "k7"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, e := postRaw(t, base+"/v1/chat/completions", "", []byte(tc.body))
			if status != tc.status || e.Param != tc.param || !strings.Contains(e.Message, tc.contains) {
				t.Fatalf("status %d %+v, want %d param %q containing %q", status, e, tc.status, tc.param, tc.contains)
			}
		})
	}
}

// manyKeys returns n distinct keys "k0".."k(n-1)", and with repeat k7 again
// at the end, each followed by a comma.
func manyKeys(n int, repeat bool) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(`"k` + itoa(i) + `":0,`)
	}
	if repeat {
		b.WriteString(`"k7":1,`)
	}
	return b.String()
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}

// jsonShape is checkJSON's reference: the nesting depth, the first
// repeated top-level key and the number of distinct top-level keys of a
// valid JSON text, found with encoding/json's
// token stream (iterative, so any depth is safe to measure).
func jsonShape(body []byte) (depth int, dup string, nkeys int, err error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	keys := map[string]bool{}
	level, topObject, wantKey := 0, false, false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return depth, dup, len(keys), nil
		}
		if err != nil {
			return 0, "", 0, err
		}
		inTop := level == 1 && topObject
		switch v := tok.(type) {
		case json.Delim:
			if v == '{' || v == '[' {
				if level == 0 {
					topObject, wantKey = v == '{', v == '{'
				}
				level++
				depth = max(depth, level)
				continue
			}
			level--
			wantKey = level == 1 && topObject // a container value ended
		case string:
			if inTop && wantKey {
				k := v
				for _, f := range requestFields {
					if strings.EqualFold(k, f) {
						k = f
					}
				}
				if keys[k] && dup == "" {
					dup = k
				}
				keys[k], wantKey = true, false
				continue
			}
			wantKey = inTop
		default:
			wantKey = inTop
		}
	}
}

// checkJSON's verdict must match the reference on valid JSON, never panic on
// anything, and everything it lets through must parse without trouble.
func FuzzCheckJSON(f *testing.F) {
	for _, body := range parseCorpus {
		f.Add([]byte(body))
	}
	for _, s := range []string{
		`{"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
		`{"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
		`[{"a":{"b":[{"c":{}}]}}]`,
		`{"a":"\"","a":1}`,
		`{"a\\":1,"a":2}`,
		`{"a":{"a":1},"b":[{"a":1}],"a":0}`,
		`{"model":1,"MoDeL":2}`,
		`{"a":1,"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
		`{"\u006dodel":1,"model":2}`,
		`{} {"a":1,"a":1}`,
		`{"a":1,"a"`,
		`]]]]{{{{`,
		`"\\\\\\"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		const limit = 64
		err := checkJSON(body, limit)
		depth, dup, keys, refErr := jsonShape(body)
		if refErr == nil && json.Valid(body) {
			// The scan stops at the first problem it meets, so with
			// several any one of them is a right answer.
			var ae *apiError
			errors.As(err, &ae)
			deep, many, repeated := depth > limit, keys > maxTopLevelKeys, dup != ""
			switch {
			case !deep && !many && !repeated:
				if err != nil {
					t.Fatalf("valid body of depth %d without repeated keys refused: %v: %q", depth, err, body)
				}
			case ae == nil:
				t.Fatalf("passed (depth %d, %d keys, repeated %q): %q", depth, keys, dup, body)
			case deep && strings.Contains(ae.Message, "max_json_depth"),
				many && strings.Contains(ae.Message, "top-level fields"),
				repeated && ae.Param == dup:
			default:
				t.Fatalf("wrong reason %q (depth %d, %d keys, repeated %q): %q", ae.Message, depth, keys, dup, body)
			}
		}
		if err == nil {
			parseRequest(body, true, limit)
			parseRequest(body, false, limit)
		}
	})
}

// checkJSON runs before every parse; it must stay cheap next to it.
func BenchmarkCheckJSON(b *testing.B) {
	for _, size := range []int{1 << 10, 8 << 10} {
		body := benchChatBody(size, false)
		b.Run(itoa(size>>10)+"KB", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if err := checkJSON(body, 64); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
