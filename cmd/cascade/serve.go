package main

import (
	"context"
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
	return serve(cfg, gateway.Options{}, *grace)
}

// serve runs a gateway until SIGINT/SIGTERM, then drains it.
func serve(cfg *config.Config, opts gateway.Options, grace time.Duration) error {
	g, err := gateway.New(cfg, opts)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- g.Listen(cfg.Listen) }()
	slog.Info("cascade gateway listening", "addr", cfg.Listen, "tiers", len(cfg.Tiers))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case err := <-errc:
		return err
	case s := <-sig:
		slog.Info("shutting down", "signal", s.String(), "grace", grace)
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	return g.Shutdown(ctx)
}
