package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExampleIsValid(t *testing.T) {
	c, err := LoadFile("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Tiers) != 2 || c.Tiers[1].Endpoints[0].Weight != 1 || c.Routing.Threshold != 0.75 {
		t.Fatalf("unexpected config: %+v", c)
	}
}

// TestBadConfigs checks that every testdata/*.bad.yaml is rejected with the
// message its first line announces ("# want: ...").
func TestBadConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.bad.yaml")
	if len(files) == 0 {
		t.Fatal("no bad configs found")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(data), "\n")
			want, ok := strings.CutPrefix(first, "# want: ")
			if !ok {
				t.Fatalf("%s: first line must be '# want: <message>'", f)
			}
			_, err = Parse(data)
			if err == nil {
				t.Fatalf("accepted; want error containing %q", want)
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not contain %q", err, want)
			}
		})
	}
}

func TestDefaultsFilled(t *testing.T) {
	c, err := Parse([]byte(`
tiers:
  - name: s
    endpoints: [{url: 'http://h:1/v1', model: m}]
    cost: {gpu: {gpus: 1, usd_per_gpu_hour: 2, watts_per_gpu: 500, prefill_tokens_per_sec: 10, decode_tokens_per_sec: 1}}
routing: {aliases: [cheap]}
scrape: {interval: 0s}
`))
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	for _, chk := range []struct {
		name string
		ok   bool
	}{
		{"timeouts", c.Timeouts == d.Timeouts && c.Timeouts.Total == 10*time.Minute},
		{"breaker", c.Breaker.ConsecutiveFailures == 5},
		{"listen", c.Listen == "127.0.0.1:8080"},
		{"fallback", c.Fallback.SmallToLarge && c.Fallback.LargeToSmall},
		{"weight", c.Tiers[0].Endpoints[0].Weight == 1},
		{"pue", c.Tiers[0].Cost.GPU.PUE == 1.2},
		{"alias mode", c.Routing.Aliases[0].Mode == "auto"},
		{"scorer", c.Routing.Scorer == "learned"},
		{"calibration", c.Routing.Calibration.Window == 10000 && c.Routing.Calibration.Shared && c.Routing.Calibration.SyncEvery == time.Second},
		{"scrape", c.Scrape.Interval == 5*time.Second && c.Scrape.Path == "/metrics"},
		{"prometheus", c.Telemetry.Prometheus},
		{"json depth", c.MaxJSONDepth == 64},
		{"server", c.Server == Server{ReadHeaderTimeout: 10 * time.Second, ReadBodyTimeout: 60 * time.Second,
			IdleTimeout: 120 * time.Second, MaxHeaderBytes: 16 << 10}},
	} {
		if !chk.ok {
			t.Errorf("default not filled: %s: %+v", chk.name, c)
		}
	}
	// A file may turn off what defaults to on.
	c, err = Parse([]byte(`
fallback: {small_to_large: false}
telemetry: {prometheus: false}
tiers: [{name: s, endpoints: [{url: 'http://h:1/v1', model: m}]}]`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Fallback.SmallToLarge || !c.Fallback.LargeToSmall || c.Telemetry.Prometheus {
		t.Fatalf("explicit false lost: %+v %+v", c.Fallback, c.Telemetry)
	}
}

func TestListenAddresses(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:8080", ":8080", "[::1]:0", "localhost:443"} {
		if err := checkHostPort(addr); err != nil {
			t.Errorf("%q: %v", addr, err)
		}
	}
	for _, addr := range []string{"", "banana", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:-1", "::1:80"} {
		if err := checkHostPort(addr); err == nil {
			t.Errorf("%q accepted", addr)
		}
	}
}
