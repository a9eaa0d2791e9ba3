package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/gateway"
)

// watchConfig reloads path into g when it changes or on SIGHUP, until ctx
// ends or the returned stop is called. It also tells g the path, for
// POST /admin/reload. With path "" it does nothing.
func watchConfig(ctx context.Context, g *gateway.Gateway, path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	g.SetConfigFile(path)
	ctx, cancel := context.WithCancel(ctx)
	reload := func(trigger string) {
		res, err := g.ReloadFile()
		if err != nil {
			slog.Error("config reload failed; the running configuration stays", "trigger", trigger, "file", path, "err", err)
			return
		}
		slog.Info("config reloaded", "trigger", trigger, "file", path, "version", res.Version)
		if len(res.RestartRequired) > 0 {
			slog.Warn("some changed settings only take effect after a restart", "settings", res.RestartRequired)
		}
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	watchDone, err := config.Watch(ctx, path, 0, func() { reload("file") },
		func(err error) { slog.Warn("config watch", "err", err) })
	if err != nil {
		slog.Warn("config file changes will not be picked up (SIGHUP and POST /admin/reload still work)", "err", err)
	}
	sigDone := make(chan struct{})
	go func() {
		defer close(sigDone)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reload("SIGHUP")
			}
		}
	}()
	return func() {
		cancel()
		signal.Stop(hup)
		<-sigDone
		if watchDone != nil {
			<-watchDone
		}
	}
}
