package main

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
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
	traffic := fs.Float64("traffic", 1, "sample requests per second the demo sends itself, so the dashboard has data; 0: none")
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
	smallURL, err := startSim(sim.Config{Model: "llama-3.2-1b-instruct", TTFT: 20 * time.Millisecond, ITL: 5 * time.Millisecond,
		HardShare: 0.3}) // about a third of its answers come out unsure
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
	cfg.Admin.TokenEnv = "CASCADE_ADMIN_TOKEN"
	token := os.Getenv(cfg.Admin.TokenEnv)
	if token == "" {
		var b [12]byte
		rand.Read(b[:])
		token = hex.EncodeToString(b[:])
		os.Setenv(cfg.Admin.TokenEnv, token)
	}
	// "auto" is hybrid: the prompt settles the clear cases and the small
	// model's answer is judged in between; two aliases show the other
	// modes side by side on the same traffic.
	cfg.Routing.Mode = config.ModeHybrid
	cfg.Routing.Aliases = []config.Alias{{Name: "auto-route", Mode: config.ModeRoute},
		{Name: "auto-cascade", Mode: config.ModeCascade}}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if *traffic > 0 {
		go demoTraffic("http://"+*listen+"/v1/chat/completions", *traffic)
	}
	fmt.Printf(`Cascade demo
  gateway           http://%[1]s   (OpenAI SDK base URL: http://%[1]s/v1)
  small tier (sim)  %[2]s
  large tier (sim)  %[3]s
  records           %[4]s  prefix %[5]s%[6]s
  dashboard         http://%[1]s/dashboard#token=%[7]s
  admin API         curl -H 'Authorization: Bearer %[7]s' http://%[1]s/admin/stats?window=1h

Routing: "auto" is hybrid, "auto-route" decides on the prompt alone, "auto-cascade"
judges every small answer first (X-Cascade-Confidence, X-Cascade-Escalated: confidence).
The small simulator answers about 30%% of prompts unsure; "[[hard]]" in a prompt forces it.

Try:
  curl -si http://%[1]s/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"auto-cascade","messages":[{"role":"user","content":"What is 2+2?"}]}'
  curl -si http://%[1]s/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"auto-cascade","messages":[{"role":"user","content":"[[hard]] Prove it."}]}'
  cascade stats --redis %[4]s --prefix %[5]s --window 1h --by tier

Ctrl-C stops it.
`, *listen, smallURL, largeURL, records, cfg.Redis.Prefix, embeddedNote(*redisURL), token)
	return serve(&cfg, "", gateway.Options{}, 10*time.Second, 10*time.Second)
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

// demoPrompts mix everyday requests with hard ones, as real traffic does.
var demoPrompts = []string{
	"What is 2+2?",
	"Say hello in French.",
	"Write a haiku about autumn leaves.",
	"What is the capital of Australia?",
	"Summarise in one sentence: the meeting moved to Thursday at 3pm.",
	"Give me three synonyms for happy.",
	"A train leaves at 9:40 and travels 238 km at 85 km/h, then 120 km at 60 km/h after a 15 minute stop. When does it arrive? Show each step.",
	"Prove that the square root of 2 is irrational, then explain which step fails for the square root of 4.",
	"Implement an LRU cache in Go with O(1) get and put, explain the invariants, and list the edge cases a test must cover.",
	"Which of the following is NOT a consequence of the Coase theorem? I. ... II. ... III. ... Explain each option.",
}

// demoModels are the routing modes the sample traffic rotates through.
var demoModels = []string{"auto", "auto-route", "auto-cascade"}

// demoTraffic sends sample chat requests at rate per second until the process ends.
func demoTraffic(url string, rate float64) {
	time.Sleep(500 * time.Millisecond) // let the gateway start listening
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for i := 0; ; i++ {
		<-tick.C
		body := fmt.Sprintf(`{"model":%q,"max_tokens":64,"stream":%t,"messages":[{"role":"user","content":%q}]}`,
			demoModels[i%len(demoModels)], i%2 == 0, demoPrompts[i%len(demoPrompts)])
		go func() {
			resp, err := http.Post(url, "application/json", strings.NewReader(body))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
}
