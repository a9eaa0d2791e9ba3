package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/gateway"
)

func init() {
	register("demo", "gateway plus a small and a large simulated model server, embedded defaults", runDemo)
}

func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "gateway address")
	redisURL := fs.String("redis", "", "Redis URL for request records; empty: an embedded in-memory Redis, gone at exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	records := *redisURL
	if records == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		records = "redis://" + mr.Addr() + "/0"
	}
	// Two simulated tiers: a fast distilled model and a slower large one.
	smallURL, err := startSim(sim.Config{Model: "llama-3.2-1b-instruct", TTFT: 20 * time.Millisecond, ITL: 5 * time.Millisecond})
	if err != nil {
		return err
	}
	largeURL, err := startSim(sim.Config{Model: "llama-3.1-70b-instruct", TTFT: 150 * time.Millisecond, ITL: 25 * time.Millisecond})
	if err != nil {
		return err
	}
	cfg := config.Default()
	cfg.Listen = *listen
	cfg.Tiers = []config.Tier{
		{Name: "small", Endpoints: []config.Endpoint{{URL: smallURL, Model: "llama-3.2-1b-instruct", Weight: 1}},
			Cost: config.Cost{GPU: &demoSmallGPU}},
		{Name: "large", Endpoints: []config.Endpoint{{URL: largeURL, Model: "llama-3.1-70b-instruct", Weight: 1}},
			Cost: config.Cost{GPU: &demoLargeGPU}},
	}
	cfg.Redis.URL = records
	if err := cfg.Validate(); err != nil {
		return err
	}
	fmt.Printf(`Cascade demo
  gateway           http://%[1]s   (OpenAI SDK base URL: http://%[1]s/v1)
  small tier (sim)  %[2]s
  large tier (sim)  %[3]s
  records           %[4]s  prefix %[5]s%[6]s

Try:
  curl -si http://%[1]s/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"auto","messages":[{"role":"user","content":"What is 2+2?"}]}'
  cascade stats --redis %[4]s --prefix %[5]s --window 1h --by tier

Ctrl-C stops it.
`, *listen, smallURL, largeURL, records, cfg.Redis.Prefix, embeddedNote(*redisURL))
	return serve(&cfg, "", gateway.Options{}, 10*time.Second)
}

func embeddedNote(redisURL string) string {
	if redisURL == "" {
		return "  (embedded in-memory Redis; --redis URL for a real one)"
	}
	return ""
}

// Demo prices, the GPU profiles of config/example.yaml: the small tier is
// priced as Llama-3.1-8B on one H100 (a 1B model costs less still), the
// large one as Llama-3.1-70B on four.
var (
	demoSmallGPU = config.GPUProfile{GPUs: 1, USDPerGPUHour: 2.5, WattsPerGPU: 500, PUE: 1.2,
		PrefillTokensPerSec: 50000, DecodeTokensPerSec: 5000}
	demoLargeGPU = config.GPUProfile{GPUs: 4, USDPerGPUHour: 2.5, WattsPerGPU: 500, PUE: 1.2,
		PrefillTokensPerSec: 25000, DecodeTokensPerSec: 2500}
)

// startSim serves a simulator on a free loopback port and returns its /v1 URL.
func startSim(c sim.Config) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: sim.New(c), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String() + "/v1", nil
}
