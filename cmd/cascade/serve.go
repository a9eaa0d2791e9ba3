package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/gateway"
)

func init() {
	register("serve", "run the gateway with a config file", runServe)
	register("check-config", "validate a config file and exit", runCheckConfig)
}

func runCheckConfig(args []string) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("usage: cascade check-config FILE [FILE...]")
	}
	bad := 0
	for _, f := range fs.Args() {
		if _, err := config.LoadFile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			bad++
			continue
		}
		fmt.Printf("%s: ok\n", f)
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d config files are invalid", bad, fs.NArg())
	}
	return nil
}

func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fs.String("config", "cascade.yaml", "config file")
	listen := fs.String("listen", "", "override the config's listen address")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "how long in-flight requests may finish on shutdown")
	drain := fs.Duration("drain-timeout", 10*time.Second, "how long the recorder may then write queued records to Redis")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.LoadFile(*path)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	return serve(cfg, *path, gateway.Options{}, *grace, *drain)
}

// serve runs a gateway until SIGINT/SIGTERM, then drains it: in-flight
// requests first, for up to grace, then the recorder's queue, for up to
// drain of its own, then telemetry. path is the config file watched for live
// reload ("" for none).
func serve(cfg *config.Config, path string, opts gateway.Options, grace, drain time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	closeTelemetry, err := setupTelemetry(ctx, cfg, &opts)
	if err != nil {
		return err
	}
	closeRecorder, err := setupRecorder(ctx, cfg, &opts)
	if err != nil {
		return err
	}
	g, err := gateway.New(cfg, opts)
	if err != nil {
		return err
	}
	stopWatch := watchConfig(ctx, g, path)
	// "listening" is logged only once the addresses are bound; a taken port
	// ends serve with the error.
	ln, err := g.Listen(cfg.Listen)
	if err == nil {
		slog.Info("cascade gateway listening", "addr", ln.Addr().String(), "admin", cfg.Admin.Listen, "tiers", len(cfg.Tiers))
		errc := make(chan error, 1)
		go func() { errc <- g.Serve(ln) }()
		select {
		case err = <-errc:
		case <-ctx.Done():
			slog.Info("shutting down", "grace", grace)
		}
	}
	stopWatch()
	dctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err = errors.Join(err, g.Shutdown(dctx))
	rctx, rcancel := context.WithTimeout(context.Background(), drain)
	defer rcancel()
	return errors.Join(err, closeRecorder(rctx), closeTelemetry(dctx))
}
