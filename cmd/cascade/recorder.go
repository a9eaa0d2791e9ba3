package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/costing"
	"github.com/cascade-gateway/cascade/gateway"
)

// setupRecorder connects the request recorder named by cfg and returns the
// function that drains it on shutdown. Without redis.url records are
// discarded. Redis being down at start is not fatal: the recorder counts
// what it cannot write and catches up when Redis answers.
func setupRecorder(ctx context.Context, cfg *config.Config, opts *gateway.Options) (func(context.Context) error, error) {
	if cfg.Redis.URL == "" {
		return func(context.Context) error { return nil }, nil
	}
	shared, err := redis.ParseURL(cfg.Redis.URL)
	if err != nil {
		return nil, fmt.Errorf("redis.url: %w", err)
	}
	// The recorder gets its own connections: it retries failed commands
	// itself (a client-level retry of a whole pipeline could count a batch
	// twice) and bounds each flush by a context deadline.
	own, _ := redis.ParseURL(cfg.Redis.URL)
	own.MaxRetries = -1
	own.ContextTimeoutEnabled = true
	rdb, recClient := redis.NewClient(shared), redis.NewClient(own)

	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		slog.Warn("redis does not answer; requests are served, records queue and are dropped until it does",
			"addr", shared.Addr, "err", err)
	}
	rec := costing.NewRedisRecorder(recClient, cfg.Redis.Prefix, cfg.Recorder)
	opts.Redis = rdb
	opts.Recorder = rec
	slog.Info("recording requests to redis", "addr", shared.Addr, "db", shared.DB, "prefix", cfg.Redis.Prefix)
	return func(ctx context.Context) error {
		err := rec.Close(ctx)
		if st := rec.Stats(); st.Dropped > 0 {
			slog.Warn("recorder dropped records", "dropped", st.Dropped, "written", st.Written)
		}
		return errors.Join(err, recClient.Close(), rdb.Close())
	}, nil
}
