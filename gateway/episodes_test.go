package gateway

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/costing"
)

func TestMoveLogEpisodes(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(prev)

	var l moveLog
	at := time.Unix(1000, 0)
	l.note(at, costing.MoveNone, "small", "small")
	for i := 0; i < 5; i++ { // an outage: one line at once, the rest wait
		l.note(at.Add(time.Duration(i)*time.Second), costing.MoveUp, "small", "large")
	}
	l.note(at, costing.MoveDown, "large", "small") // another direction: its own line
	l.note(at.Add(11*time.Second), costing.MoveUp, "small", "large")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), buf.String())
	}
	for i, want := range []string{"fallback:.*requests=1", "degraded:.*chosen_tier=large serving_tier=small requests=1", "fallback:.*requests=5"} {
		parts := strings.SplitN(want, ".*", 2)
		if !strings.Contains(lines[i], parts[0]) || !strings.Contains(lines[i], parts[1]) || !strings.Contains(lines[i], "level=WARN") {
			t.Errorf("line %d %q, want %s", i, lines[i], want)
		}
	}
}
