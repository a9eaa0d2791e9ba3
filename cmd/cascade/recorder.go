package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/gateway"
)

func init() { redis.SetLogger(redisLog{}) }

// redisLog routes go-redis's own log lines through slog. Its dial failures
// go to debug: while Redis is away they repeat with every retry, and the
// recorder logs one line when Redis is lost and one when it is back.
type redisLog struct{}

func (redisLog) Printf(ctx context.Context, format string, v ...any) {
	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	level := slog.LevelWarn
	if strings.Contains(msg, "failed to dial") {
		level = slog.LevelDebug
	}
	slog.Log(ctx, level, msg, "component", "go-redis")
}

// setupRecorder connects the request recorder named by cfg and returns the
// function that drains it on shutdown. Without redis.url records are
// discarded. Redis being down at start is not fatal: records wait in the
// recorder's queue until Redis answers.
func setupRecorder(ctx context.Context, cfg *config.Config, opts *gateway.Options) (func(context.Context) error, error) {
	if cfg.Redis.URL == "" {
		return func(context.Context) error { return nil }, nil
	}
	shared, err := redis.ParseURL(cfg.Redis.URL)
	if err != nil {
		return nil, fmt.Errorf("redis.url: %w", err)
	}
	// The recorder gets its own connections: it retries failed batches
	// itself, with backoff, and bounds each flush by a context deadline.
	own, _ := redis.ParseURL(cfg.Redis.URL)
	own.MaxRetries = -1
	own.ContextTimeoutEnabled = true
	rdb, recClient := redis.NewClient(shared), redis.NewClient(own)

	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		slog.Warn("redis does not answer; requests are served and records wait in the queue until it does",
			"addr", shared.Addr, "err", err)
	}
	rec := costing.NewRedisRecorder(recClient, cfg.Redis.Prefix, cfg.Recorder)
	opts.Redis = rdb
	opts.Recorder = rec
	slog.Info("recording requests to redis", "addr", shared.Addr, "db", shared.DB, "prefix", cfg.Redis.Prefix)
	return func(ctx context.Context) error {
		before, start := rec.Stats(), time.Now()
		err := rec.Close(ctx)
		st := rec.Stats()
		if st.Dropped > 0 {
			slog.Warn("recorder dropped records", "dropped", st.Dropped,
				"dropped_at_shutdown", st.Dropped-before.Dropped, "written", st.Written, "err", err)
		} else {
			slog.Info("recorder drained", "written", st.Written, "took", time.Since(start).Round(time.Millisecond))
		}
		if err != nil {
			err = fmt.Errorf("recorder drain: %w", err)
		}
		return errors.Join(err, recClient.Close(), rdb.Close())
	}, nil
}
