package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// TestScrapedLoadSteersTraffic: two small-tier simulators, one busy with
// requests from another client. Once the gateway has scraped their metrics,
// /admin/backends shows the backlog and new requests go to the idle one.
func TestScrapedLoadSteersTraffic(t *testing.T) {
	busy, busyURL := simServer(t, sim.Config{Model: "small-model", MinTokens: 4, MaxTokens: 8})
	idle, idleURL := simServer(t, sim.Config{Model: "small-model", MinTokens: 4, MaxTokens: 8})
	defer busy.Close() // ends the held requests before the servers close

	// Another client holds 6 requests on the busy server.
	busy.SetFaults(0, 0, 1, 0)
	ctx, cancel := context.WithCancel(context.Background())
	var held sync.WaitGroup
	defer held.Wait()
	defer cancel()
	for i := 0; i < 6; i++ {
		held.Add(1)
		go func() {
			defer held.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, busyURL+"/chat/completions",
				strings.NewReader(`{"model":"small-model","messages":[{"role":"user","content":"hold"}]}`))
			req.Header.Set("Content-Type", "application/json")
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	waitUntil(t, func() bool { return busy.Stats().Running == 6 }, "the held requests")
	busy.SetFaults(0, 0, 0, 0)

	cfg := testConfig(t, []string{busyURL, idleURL}, []string{idleURL})
	cfg.Scrape.Interval = 20 * time.Millisecond
	tok := adminToken(t, cfg)
	_, base := startGateway(t, cfg, Options{})

	type ep struct {
		Tier  string `json:"tier"`
		URL   string `json:"url"`
		Queue int64  `json:"queue"`
		Load  struct {
			Running float64 `json:"running"`
			Server  string  `json:"server"`
		} `json:"load"`
	}
	waitUntil(t, func() bool {
		_, body := adminDo(t, "GET", base+"/admin/backends", tok, "")
		var out struct{ Endpoints []ep }
		json.Unmarshal(body, &out)
		for _, e := range out.Endpoints {
			if e.Tier == "small" && e.URL == busyURL {
				return e.Queue == 6 && e.Load.Running == 6 && e.Load.Server == "vllm"
			}
		}
		return false
	}, "/admin/backends to show the busy server's backlog")

	busy0, idle0 := busy.Stats().Requests, idle.Stats().Requests
	client := sdkClient(base)
	for i := 0; i < 30; i++ {
		if _, err := client.Chat.Completions.New(context.Background(), chatParams("small", "hi")); err != nil {
			t.Fatal(err)
		}
	}
	gotBusy, gotIdle := busy.Stats().Requests-busy0, idle.Stats().Requests-idle0
	t.Logf("of 30 requests: busy %d, idle %d", gotBusy, gotIdle)
	if gotBusy > 1 || gotIdle < 29 {
		t.Fatalf("busy server got %d of 30 new requests, idle %d", gotBusy, gotIdle)
	}
}
