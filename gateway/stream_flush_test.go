package gateway

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/backends/sim"
)

// Events are relayed as they arrive: the first one reaches the client while
// the backend is still generating the rest (the relay flushes whenever no
// further event is already waiting).
func TestStreamRelaysEventsAsTheyArrive(t *testing.T) {
	small, smallURL := simServer(t, sim.Config{Model: "small-model", ITL: 40 * time.Millisecond, MinTokens: 20, MaxTokens: 20})
	_, base := startGateway(t, testConfig(t, []string{smallURL}, []string{smallURL}), Options{})
	body := `{"model":"small","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	events, doneSeen := 0, false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		events++
		if events == 2 {
			if st := small.Stats(); st.Completed != 0 || st.Running != 1 {
				t.Fatalf("second event reached the client only after generation ended: %+v", st)
			}
		}
		doneSeen = line == "data: [DONE]"
	}
	if !doneSeen || events < 20 {
		t.Fatalf("%d events, [DONE] %v", events, doneSeen)
	}
}
