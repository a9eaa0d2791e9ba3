package backends

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// failureLogInterval is the least time between two failure lines of one
// endpoint: a broken endpoint under load fails on every request, and one
// line a second with a count says as much as thousands.
const failureLogInterval = time.Second

// logLimit is an endpoint's logger and the state that rate-limits its
// failure lines.
type logLimit struct {
	log        *slog.Logger // nil: slog.Default() at the time of the line
	last       atomic.Int64 // Unix nanoseconds of the last failure line
	suppressed atomic.Int64 // failures not logged since
}

func (e *Endpoint) logger() *slog.Logger {
	if e.logs.log != nil {
		return e.logs.log
	}
	return slog.Default()
}

func (e *Endpoint) attrs(extra ...slog.Attr) []slog.Attr {
	return append([]slog.Attr{slog.String("tier", e.Tier), slog.String("model", e.Model), slog.String("url", e.URL)}, extra...)
}

// logFailure writes a "backend request failed" line for err, at most one
// per failureLogInterval; "suppressed" counts the failures not logged since
// the previous line.
func (e *Endpoint) logFailure(err error) {
	now := time.Now().UnixNano()
	last := e.logs.last.Load()
	if last != 0 && now-last < int64(failureLogInterval) || !e.logs.last.CompareAndSwap(last, now) {
		e.logs.suppressed.Add(1)
		return
	}
	e.logger().LogAttrs(context.Background(), slog.LevelWarn, "backend request failed", e.attrs(
		slog.String("error_type", errorType(err)), slog.String("error", err.Error()),
		slog.Int64("suppressed", e.logs.suppressed.Swap(0)))...)
}

// logCoolDown writes the line for a cool-down beginning (not for one being
// extended), so there is at most one line per cool-down.
func (e *Endpoint) logCoolDown(d time.Duration, status int) {
	e.logger().LogAttrs(context.Background(), slog.LevelWarn, "backend cooling down", e.attrs(
		slog.Int("status", status), slog.Duration("retry_after", d))...)
}

// logBreaker writes a breaker transition: a warning when it opens.
func (e *Endpoint) logBreaker(from, to gobreaker.State) {
	level := slog.LevelInfo
	if to == gobreaker.StateOpen {
		level = slog.LevelWarn
	}
	e.logger().LogAttrs(context.Background(), level, "backend breaker state changed", e.attrs(
		slog.String("from", from.String()), slog.String("to", to.String()))...)
}
