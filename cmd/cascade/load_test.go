package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/cascade-gateway/cascade/backends/sim"
)

func startTestSim(t *testing.T, c sim.Config) (*sim.Server, string) {
	t.Helper()
	s := sim.New(c)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts.URL + "/v1"
}

func testLoad(t *testing.T, url string, rate float64, d time.Duration, stream bool) *loadReport {
	t.Helper()
	bodies, err := loadBodies("", "sim", stream, 8)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := loadRun(context.Background(), loadConfig{URL: url, Rate: rate, Duration: d, Stream: stream,
		Bodies: bodies, Concurrency: 16, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestLoadCountsEveryScheduledRequest(t *testing.T) {
	s, url := startTestSim(t, sim.Config{Model: "sim"})
	rep := testLoad(t, url, 200, time.Second, false)
	if rep.Sent != 200 || rep.OK != 200 || rep.Errors != 0 || rep.ByStatus["200"] != 200 || len(rep.ByStatus) != 1 {
		t.Fatalf("want 200 sent and ok, got sent %d ok %d errors %d by status %v", rep.Sent, rep.OK, rep.Errors, rep.ByStatus)
	}
	if st := s.Stats(); st.Requests != 200 || st.Completed != 200 {
		t.Fatalf("simulator saw %+v, want 200 completed requests", st)
	}
	l := rep.Latency
	if !(l.P50 > 0 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
		t.Fatalf("latency percentiles out of order: %+v", l)
	}
	if rep.Service.P50 > rep.Latency.P50 || rep.Service.Max > rep.Latency.Max {
		t.Fatalf("service time exceeds latency from the due time: %+v vs %+v", rep.Service, rep.Latency)
	}
	if rep.Achieved <= 0 || rep.TTFT != nil {
		t.Fatalf("achieved %v, ttft %v", rep.Achieved, rep.TTFT)
	}
}

func TestLoadGroupsErrorsByStatus(t *testing.T) {
	s, url := startTestSim(t, sim.Config{Model: "sim"})
	s.SetFaults(1, 503, 0, 0)
	rep := testLoad(t, url, 100, 500*time.Millisecond, false)
	if rep.Sent != 50 || rep.OK != 0 || rep.Errors != 50 || rep.ByStatus["503"] != 50 {
		t.Fatalf("want 50 errors with status 503, got sent %d ok %d errors %d %v", rep.Sent, rep.OK, rep.Errors, rep.ByStatus)
	}
	// Nothing listens: transport errors are counted, not lost.
	rep = testLoad(t, "http://127.0.0.1:1/v1", 50, 200*time.Millisecond, false)
	if rep.Sent != 10 || rep.Errors != 10 || rep.ByStatus["error: connection refused"] != 10 {
		t.Fatalf("want 10 refused, got %+v", rep.ByStatus)
	}
}

func TestLoadStreamsMeasureTTFT(t *testing.T) {
	s, url := startTestSim(t, sim.Config{Model: "sim", MinTokens: 4, MaxTokens: 4})
	rep := testLoad(t, url, 100, 500*time.Millisecond, true)
	if rep.Sent != 50 || rep.OK != 50 || rep.TTFT == nil {
		t.Fatalf("sent %d ok %d %v ttft %v", rep.Sent, rep.OK, rep.ByStatus, rep.TTFT)
	}
	if rep.TTFT.P50 <= 0 || rep.TTFT.Max > rep.Latency.Max {
		t.Fatalf("ttft %+v vs latency %+v", *rep.TTFT, rep.Latency)
	}
	// Events are read as they come: the first token arrives well before
	// the last one (20 ms apart each).
	_, slowURL := startTestSim(t, sim.Config{Model: "sim", ITL: 20 * time.Millisecond, MinTokens: 5, MaxTokens: 5})
	rep = testLoad(t, slowURL, 20, 500*time.Millisecond, true)
	if rep.OK != 10 || rep.TTFT.P50 >= rep.Latency.P50 || rep.Latency.P50 < 80*time.Millisecond {
		t.Fatalf("slow stream: ok %d ttft %v latency %v", rep.OK, rep.TTFT.P50, rep.Latency.P50)
	}
	// A stream cut before [DONE] is an error, not a success.
	s.SetFaults(0, 0, 0, 2)
	rep = testLoad(t, url, 100, 200*time.Millisecond, true)
	if rep.OK != 0 || rep.Errors != 20 {
		t.Fatalf("cut streams: ok %d errors %d %v", rep.OK, rep.Errors, rep.ByStatus)
	}
}

func TestLoadBodies(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "p.jsonl")
	os.WriteFile(f, []byte(`{"messages":[{"role":"user","content":"a"}],"temperature":0.5}`+"\n\n"+`{"prompt":"b"}`+"\n"), 0o644)
	bodies, err := loadBodies(f, "small", true, 16)
	if err != nil {
		t.Fatal(err)
	}
	if len(bodies) != 2 {
		t.Fatalf("%d bodies", len(bodies))
	}
	for _, b := range bodies {
		r := gjson.ParseBytes(b)
		if r.Get("model").String() != "small" || !r.Get("stream").Bool() || r.Get("max_tokens").Int() != 16 || !r.Get("messages").IsArray() {
			t.Fatalf("body %s", b)
		}
	}
	if gjson.GetBytes(bodies[0], "temperature").Float() != 0.5 || gjson.GetBytes(bodies[1], "messages.0.content").String() != "b" {
		t.Fatalf("bodies lost fields: %s", bytes.Join(bodies, []byte("\n")))
	}
	os.WriteFile(f, []byte(`{"model":"x"}`+"\n"), 0o644)
	if _, err := loadBodies(f, "small", false, 0); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Fatalf("a line without messages or prompt: %v", err)
	}
}

func TestProcessCPU(t *testing.T) {
	end := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(end) {
	}
	sec, err := processCPU(os.Getpid())
	if err != nil || sec <= 0 {
		t.Fatalf("cpu %v %v", sec, err)
	}
	if _, err := processCPU(0); err == nil {
		t.Fatal("pid 0 accepted")
	}
}

func TestLoadCommandCompareWritesJSON(t *testing.T) {
	_, a := startTestSim(t, sim.Config{Model: "sim", TTFT: 5 * time.Millisecond})
	_, b := startTestSim(t, sim.Config{Model: "sim"})
	out := filepath.Join(t.TempDir(), "r.json")
	err := runLoad([]string{"--url", a, "--compare", b, "--rate", "100", "--duration", "300ms", "--warmup", "0",
		"--max-tokens", "4", "--pid", strconv.Itoa(os.Getpid()), "--json", out})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var reps []loadReport
	if err := json.Unmarshal(raw, &reps); err != nil {
		t.Fatal(err)
	}
	if len(reps) != 2 || reps[0].URL != a || reps[1].URL != b {
		t.Fatalf("reports: %s", raw)
	}
	for _, r := range reps {
		if r.Sent != 30 || r.OK != 30 || r.ByStatus["200"] != 30 {
			t.Fatalf("%s: sent %d ok %d %v", r.URL, r.Sent, r.OK, r.ByStatus)
		}
	}
	if reps[0].CPU == nil || reps[1].CPU != nil {
		t.Fatalf("CPU reported for the wrong run: %+v %+v", reps[0].CPU, reps[1].CPU)
	}
	// The first server takes 5 ms more a request.
	if reps[0].Service.P50 < reps[1].Service.P50 || reps[0].Service.P50 < 5*time.Millisecond {
		t.Fatalf("service p50 %v vs %v", reps[0].Service.P50, reps[1].Service.P50)
	}
}
