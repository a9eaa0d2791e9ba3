package gateway

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cascade-gateway/cascade/costing"
)

// moveLogEvery is the shortest gap between two log lines of the same kind of
// move: an outage moves every request, and one line per request would drown
// the log.
const moveLogEvery = 10 * time.Second

// moveLog writes the fallback and degraded episodes to the log: the first
// move of a direction at once, then at most one line per moveLogEvery with
// how many moves happened since the last line.
type moveLog struct {
	last  [3]atomic.Int64 // unix nanos of the last line, by costing.Move
	since [3]atomic.Int64 // moves since that line
}

func (l *moveLog) note(now time.Time, m costing.Move, chosen, served string) {
	if m == costing.MoveNone || int(m) >= len(l.last) {
		return
	}
	n := l.since[m].Add(1)
	last := l.last[m].Load()
	t := now.UnixNano()
	if last != 0 && t-last < int64(moveLogEvery) || !l.last[m].CompareAndSwap(last, t) {
		return
	}
	l.since[m].Add(-n)
	msg := "fallback: serving on a more capable tier because the chosen one has no endpoint available"
	if m == costing.MoveDown {
		msg = "degraded: serving on a cheaper tier because the chosen one has no endpoint available"
	}
	slog.Warn(msg, "chosen_tier", chosen, "serving_tier", served, "requests", n)
}
