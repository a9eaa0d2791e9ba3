package backends

import (
	"testing"
	"time"

	"github.com/cascade-gateway/cascade/config"
)

func testEndpoints(n int) []*Endpoint {
	bc := config.Breaker{ConsecutiveFailures: 1, OpenFor: time.Hour, HalfOpenRequests: 1}
	eps := make([]*Endpoint, n)
	for i := range eps {
		eps[i] = newEndpoint("t", config.Endpoint{URL: "http://h" + string(rune('a'+i)) + "/v1", Model: "m", Weight: 1}, bc, nil)
	}
	return eps
}

func TestP2CAvoidsLoadedEndpoint(t *testing.T) {
	eps := testEndpoints(2)
	eps[0].inflight.Store(10)
	for i := 0; i < 100; i++ {
		if got := (P2C{}).Pick(eps, nil); got != eps[1] {
			t.Fatalf("picked the loaded endpoint")
		}
	}
	eps[0].inflight.Store(0)
	eps[1].SetQueue(50) // upstream-reported queue counts as load too
	for i := 0; i < 100; i++ {
		if got := (P2C{}).Pick(eps, nil); got != eps[0] {
			t.Fatalf("picked the endpoint with a deep upstream queue")
		}
	}
}

func TestP2CSkipsExcludedAndOpen(t *testing.T) {
	eps := testEndpoints(3)
	done, err := eps[0].cb.Allow()
	if err != nil {
		t.Fatal(err)
	}
	done(errTest) // one failure opens it (ConsecutiveFailures: 1)
	if eps[0].Available() {
		t.Fatal("breaker should be open")
	}
	for i := 0; i < 100; i++ {
		if got := (P2C{}).Pick(eps, []*Endpoint{eps[1]}); got != eps[2] {
			t.Fatalf("picked %v, want the only eligible endpoint", got.URL)
		}
	}
	if got := (P2C{}).Pick(eps, []*Endpoint{eps[1], eps[2]}); got != nil {
		t.Fatalf("picked %v with nothing eligible", got.URL)
	}
}

func TestP2CSpreadsByWeight(t *testing.T) {
	eps := testEndpoints(2)
	eps[1].Weight = 3
	// Simulate steady load: each pick holds a request until 8 are in flight.
	counts := map[*Endpoint]int{}
	for i := 0; i < 4000; i++ {
		e := (P2C{}).Pick(eps, nil)
		counts[e]++
		e.inflight.Add(1)
		if i%8 == 7 {
			eps[0].inflight.Store(0)
			eps[1].inflight.Store(0)
		}
	}
	if counts[eps[1]] < 2*counts[eps[0]] {
		t.Fatalf("weight 3 endpoint got %d vs %d for weight 1", counts[eps[1]], counts[eps[0]])
	}
}

type testErr struct{}

func (testErr) Error() string { return "test failure" }

var errTest = testErr{}

func TestRegistryKeepsEndpointsAcrossReload(t *testing.T) {
	r := NewRegistry(NewClient(config.Default().Timeouts))
	cfg := config.Default()
	cfg.Tiers = []config.Tier{{Name: "s", Endpoints: []config.Endpoint{{URL: "http://a/v1", Model: "m", Weight: 1}, {URL: "http://b/v1", Model: "m", Weight: 1}}}}
	p1 := r.Pools(&cfg)["s"]
	cfg2 := cfg
	cfg2.Tiers = []config.Tier{{Name: "s", Endpoints: []config.Endpoint{{URL: "http://a/v1", Model: "m", Weight: 1}, {URL: "http://c/v1", Model: "m", Weight: 1}}}}
	p2 := r.Pools(&cfg2)["s"]
	if p1.Endpoints[0] != p2.Endpoints[0] {
		t.Fatal("unchanged endpoint was rebuilt; its breaker state would be lost")
	}
	if p2.Endpoints[1].URL != "http://c/v1" || p2.Endpoints[1] == p1.Endpoints[1] {
		t.Fatal("changed endpoint not replaced")
	}
}
