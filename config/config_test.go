package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	c, err := Parse([]byte("tiers: [{name: s, endpoints: [{url: 'http://h:1/v1', model: m}]}]"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Timeouts.Total == 0 || c.Breaker.ConsecutiveFailures != 5 || c.Listen == "" || !c.Fallback.SmallToLarge {
		t.Fatalf("defaults not filled: %+v", c)
	}
}
