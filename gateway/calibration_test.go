package gateway

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/backends/sim"
	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/router"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func fixedCurrent(cal *router.Calibrator, prefix string) func() (*router.Calibrator, string, time.Duration, bool) {
	return func() (*router.Calibrator, string, time.Duration, bool) { return cal, prefix, time.Second, true }
}

func targetRouting(target float64, window int) config.Routing {
	return config.Routing{Threshold: 0.5, TargetEscalationRate: target, Scorer: "length",
		Calibration: config.Calibration{Window: window, SyncEvery: time.Second}}
}

// TestCalibrationFleetRedis: two gateways' calibrators, fed different score
// distributions and traffic split 3:1, exchange windows through a real
// Redis. The fleet's realised rate is within ±2 points of the target while
// each gateway alone is far off it (so it was the merged histogram that
// held the target).
func TestCalibrationFleetRedis(t *testing.T) {
	rdb, prefix := testRedis(t)
	const target = 0.25
	a := router.NewCalibrator(targetRouting(target, 10000))
	b := router.NewCalibrator(targetRouting(target, 10000))
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	sa := newCalibSync(rdb, "gw-a", clock.now, fixedCurrent(a, prefix))
	sb := newCalibSync(rdb, "gw-b", clock.now, fixedCurrent(b, prefix))
	ctx := context.Background()
	ra, rb := rand.New(rand.NewPCG(1, 1)), rand.New(rand.NewPCG(2, 2))
	var ea, eb, na, nb int
	for round := 0; round < 200; round++ {
		for i := 0; i < 300; i++ { // a: uniform scores, 300 requests a second
			if e, _ := a.Decide(ra.Float64()); round >= 50 {
				na++
				if e {
					ea++
				}
			}
		}
		for i := 0; i < 100; i++ { // b: mostly low scores, 100 a second
			if e, _ := b.Decide(math.Pow(rb.Float64(), 4)); round >= 50 {
				nb++
				if e {
					eb++
				}
			}
		}
		clock.t = clock.t.Add(time.Second)
		if err := sa.sync(ctx); err != nil {
			t.Fatal(err)
		}
		if err := sb.sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fleet := float64(ea+eb) / float64(na+nb)
	rateA, rateB := float64(ea)/float64(na), float64(eb)/float64(nb)
	t.Logf("fleet %.4f; a %.4f (uniform, 3/4 of traffic), b %.4f (skewed); thresholds %.4f / %.4f; peers %d/%d; measured rates %.0f/%.0f per s",
		fleet, rateA, rateB, a.Threshold(), b.Threshold(), sa.peers.Load(), sb.peers.Load(), sa.rate, sb.rate)
	if math.Abs(fleet-target) > 0.02 {
		t.Fatalf("fleet rate %.4f, want %.2f±0.02", fleet, target)
	}
	if math.Abs(rateA-target) < 0.03 || math.Abs(rateB-target) < 0.03 {
		t.Fatalf("a gateway alone holds the target (%.3f, %.3f): the windows were not merged", rateA, rateB)
	}
	if sa.peers.Load() != 1 || sb.peers.Load() != 1 || sa.errors.Load() != 0 {
		t.Fatalf("peers %d %d, errors %d", sa.peers.Load(), sb.peers.Load(), sa.errors.Load())
	}
	if n, _ := rdb.Exists(ctx, prefix+"calib:i:gw-a", prefix+"calib:i:gw-b").Result(); n != 2 {
		t.Fatalf("%d window keys in Redis, want 2", n)
	}
	if ttl, _ := rdb.PTTL(ctx, prefix+"calib:i:gw-a").Result(); ttl <= 0 || ttl > calibPeerTTL*time.Second {
		t.Fatalf("window TTL %v", ttl)
	}

	// b stops: its window leaves Redis and a calibrates on its own again.
	close(sb.stop) // the loop never ran; close marks it stopped
	close(sb.done)
	sb.stopOnce.Do(func() {})
	sb.close(ctx)
	if n, _ := rdb.Exists(ctx, prefix+"calib:i:gw-b").Result(); n != 0 {
		t.Fatal("b's window outlived its stop")
	}
	for round := 0; round < 40; round++ {
		for i := 0; i < 300; i++ {
			a.Decide(ra.Float64())
		}
		clock.t = clock.t.Add(time.Second)
		if err := sa.sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if sa.peers.Load() != 0 || math.Abs(a.Threshold()-0.75) > 0.02 {
		t.Fatalf("after b left: peers %d, threshold %.3f (want about 0.75)", sa.peers.Load(), a.Threshold())
	}
}

// TestCalibrationPrunesStalePeers: an instance listed in the set whose
// window expired is dropped from the set and not merged.
func TestCalibrationPrunesStalePeers(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := context.Background()
	cal := router.NewCalibrator(targetRouting(0.25, 1000))
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	cs := newCalibSync(rdb, "me", clock.now, fixedCurrent(cal, prefix))
	rdb.SAdd(ctx, prefix+"calib:instances", "ghost")
	rdb.Set(ctx, prefix+"calib:i:junk", "not a window", time.Minute)
	rdb.SAdd(ctx, prefix+"calib:instances", "junk")
	for i := 0; i < 3; i++ {
		for j := 0; j < 500; j++ {
			cal.Decide(float64(j) / 500)
		}
		clock.t = clock.t.Add(time.Second)
		if err := cs.sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	members, _ := rdb.SMembers(ctx, prefix+"calib:instances").Result()
	if strings.Contains(strings.Join(members, ","), "ghost") {
		t.Fatalf("expired instance still listed: %v", members)
	}
	if cs.peers.Load() != 0 {
		t.Fatalf("merged %d peers, want none (one expired, one malformed)", cs.peers.Load())
	}
}

// TestCalibrationRedisDown: with Redis unreachable the gateway counts the
// failures and keeps calibrating locally; the fleet's last windows are
// dropped after calibPeerTTL periods.
func TestCalibrationRedisDown(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := context.Background()
	const target = 0.25
	a := router.NewCalibrator(targetRouting(target, 2000))
	b := router.NewCalibrator(targetRouting(target, 2000))
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	sa := newCalibSync(rdb, "a", clock.now, fixedCurrent(a, prefix))
	sb := newCalibSync(rdb, "b", clock.now, fixedCurrent(b, prefix))
	feed := func() {
		for i := 0; i < 400; i++ {
			a.Decide(float64(i%100) / 100)       // uniform: alone 0.75
			b.Decide(0.2 * float64(i%100) / 100) // all below 0.2
		}
		clock.t = clock.t.Add(time.Second)
	}
	for i := 0; i < 10; i++ {
		feed()
		sa.sync(ctx)
		sb.sync(ctx)
	}
	merged := a.Threshold()
	if merged > 0.6 {
		t.Fatalf("merged threshold %.3f; b's low scores should pull it down", merged)
	}
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 100 * time.Millisecond, MaxRetries: -1, DialerRetries: 1})
	defer dead.Close()
	sa.rdb = dead
	for i := 0; i < calibPeerTTL+2; i++ {
		feed()
		if err := sa.sync(ctx); err == nil {
			t.Fatal("sync with Redis down succeeded")
		}
	}
	if got := sa.errors.Load(); got != calibPeerTTL+2 {
		t.Fatalf("errors %d", got)
	}
	if th := a.Threshold(); math.Abs(th-0.75) > 0.02 {
		t.Fatalf("threshold %.3f with Redis down, want the local 0.75", th)
	}
	// Redis back: merged again.
	sa.rdb = rdb
	feed()
	sb.sync(ctx)
	if err := sa.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if th := a.Threshold(); th > 0.6 {
		t.Fatalf("threshold %.3f after Redis came back, want merged", th)
	}
}

func TestWindowEncoding(t *testing.T) {
	counts := make([]uint32, router.CalibrationBins)
	for i := range counts {
		counts[i] = uint32(i * i * 4099)
	}
	b := encodeWindow(nil, 12.5, counts)
	rate, got, err := decodeWindow(b)
	if err != nil || rate != 12.5 {
		t.Fatalf("decode: %v %v", rate, err)
	}
	for i := range counts {
		if got[i] != counts[i] {
			t.Fatalf("bin %d: %d, want %d", i, got[i], counts[i])
		}
	}
	for _, bad := range [][]byte{nil, {9}, b[:20], append([]byte{2}, b[1:]...), encodeWindow(nil, 1, counts[:10])} {
		if _, _, err := decodeWindow(bad); err == nil {
			t.Fatalf("malformed window %x accepted", bad[:min(len(bad), 12)])
		}
	}
}

// policyGateway serves a two-tier gateway over simulators with the length
// scorer (a prompt of n bytes scores n/4000).
func policyGateway(t *testing.T, mod func(*config.Config), opts Options) (*Gateway, string) {
	t.Helper()
	_, smallURL := simServer(t, sim.Config{Model: "small-model", MaxTokens: 4})
	_, largeURL := simServer(t, sim.Config{Model: "large-model", MaxTokens: 4})
	cfg := testConfig(t, []string{smallURL}, []string{largeURL})
	cfg.Routing.Scorer = "length" // scores are bytes/4000: the cases below rely on it
	cfg.Routing.Threshold = 0.5
	if mod != nil {
		mod(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return startGateway(t, cfg, opts)
}

func ask(t *testing.T, client openai.Client, model, prompt string, opts ...option.RequestOption) (tier, escalated string, err error) {
	t.Helper()
	var hr *http.Response
	opts = append(opts, option.WithResponseInto(&hr))
	_, err = client.Chat.Completions.New(context.Background(), chatParams(model, prompt), opts...)
	if err != nil {
		return "", "", err
	}
	return hr.Header.Get("X-Cascade-Tier"), hr.Header.Get("X-Cascade-Escalated"), nil
}

// TestAliasPolicies: alias never stays on the cheapest tier, always goes to
// the most capable, an alias threshold applies, and a plain alias follows
// the routing policy.
func TestAliasPolicies(t *testing.T) {
	_, base := policyGateway(t, func(c *config.Config) {
		th := 0.9
		c.Routing.Aliases = []config.Alias{{Name: "cheap", Mode: "never"}, {Name: "best", Mode: "always"},
			{Name: "picky", Threshold: &th}, {Name: "plain"}}
	}, Options{})
	client := sdkClient(base)
	long := strings.Repeat("x", 2400) // scores 0.6
	cases := []struct{ model, prompt, tier, escalated string }{
		{"cheap", long, "small", "false"},
		{"best", "hi", "large", "alias"},
		{"picky", long, "small", "false"},
		{"picky", strings.Repeat("x", 3800), "large", "score"},
		{"plain", long, "large", "score"},
		{"plain", "hi", "small", "false"},
		{"auto", long, "large", "score"},
	}
	for _, tc := range cases {
		tier, esc, err := ask(t, client, tc.model, tc.prompt)
		if err != nil {
			t.Fatalf("%s: %v", tc.model, err)
		}
		if tier != tc.tier || esc != tc.escalated {
			t.Fatalf("%s with %d bytes: tier %s escalated %s, want %s %s", tc.model, len(tc.prompt), tier, esc, tc.tier, tc.escalated)
		}
	}
}

// TestTierHeader: X-Cascade-Tier pins the tier when allowed, names the
// header in a 400 when it names no tier, and is ignored when not allowed.
func TestTierHeader(t *testing.T) {
	for _, allowed := range []bool{true, false} {
		t.Run(fmt.Sprintf("allowed=%v", allowed), func(t *testing.T) {
			g, base := policyGateway(t, func(c *config.Config) {
				c.Routing.AllowTierHeader = allowed
				c.Routing.Aliases = []config.Alias{{Name: "cheap", Mode: "never"}}
			}, Options{})
			client := sdkClient(base)
			long := strings.Repeat("x", 3000)
			type tc struct{ model, prompt, header, tier, escalated string }
			cases := []tc{{"auto", "hi", "large", "large", "header"}, {"auto", long, "small", "small", "false"},
				{"cheap", "hi", "large", "large", "header"}, {"large", "hi", "small", "large", "false"}}
			if !allowed {
				cases = []tc{{"auto", "hi", "large", "small", "false"}, {"auto", long, "small", "large", "score"},
					{"cheap", "hi", "large", "small", "false"}, {"auto", "hi", "nonsense", "small", "false"}}
			}
			for _, c := range cases {
				tier, esc, err := ask(t, client, c.model, c.prompt, option.WithHeader("X-Cascade-Tier", c.header))
				if err != nil {
					t.Fatalf("%+v: %v", c, err)
				}
				if tier != c.tier || esc != c.escalated {
					t.Fatalf("%+v: got tier %s escalated %s", c, tier, esc)
				}
			}
			_, _, err := ask(t, client, "auto", "hi", option.WithHeader("X-Cascade-Tier", "nonsense"))
			if g.CalibrationStatus().Shared {
				t.Fatal("no Redis, yet shared")
			}
			if !allowed {
				return
			}
			var ae *openai.Error
			if !errors.As(err, &ae) || ae.StatusCode != 400 || !strings.Contains(ae.Message, "X-Cascade-Tier") ||
				!strings.Contains(ae.Message, `"nonsense"`) || ae.Param != "X-Cascade-Tier" || ae.Type != "invalid_request_error" {
				t.Fatalf("unknown tier: %v", err)
			}
		})
	}
}

// TestTargetRateHTTP: in target-rate mode over HTTP, a stream of prompts
// whose scores cycle through 100 distinct values escalates the target share
// once the window has filled; a reload with the same target keeps the
// calibration, one with a new target starts a new one.
func TestTargetRateHTTP(t *testing.T) {
	g, base := policyGateway(t, func(c *config.Config) {
		c.Routing.TargetEscalationRate = 0.3
		c.Routing.Calibration.Window = 200
	}, Options{})
	client := sdkClient(base)
	esc := 0
	const n, warm = 500, 200
	for i := 0; i < n; i++ {
		k := (i*37)%100 + 1 // a permutation of 1..100 per 100 requests
		tier, e, err := ask(t, client, "auto", strings.Repeat("y", k*40))
		if err != nil {
			t.Fatal(err)
		}
		if (e == "score") != (tier == "large") {
			t.Fatalf("tier %s escalated %s", tier, e)
		}
		if i >= warm && e == "score" {
			esc++
		}
	}
	rate := float64(esc) / (n - warm)
	cal := g.snap.Load().policy.Calibrator()
	t.Logf("realised rate %.3f over %d requests after warm-up; threshold %.4f", rate, n-warm, cal.Threshold())
	if math.Abs(rate-0.3) > 0.02 {
		t.Fatalf("realised rate %.3f, want 0.30±0.02", rate)
	}
	if th := cal.Threshold(); th < 0.70 || th > 0.72 {
		t.Fatalf("threshold %.4f, want between the scores 0.70 and 0.71", th)
	}

	cfg := *g.snap.Load().cfg
	cfg.Routing.AllowTierHeader = true
	if err := g.Apply(&cfg); err != nil {
		t.Fatal(err)
	}
	if g.snap.Load().policy.Calibrator() != cal {
		t.Fatal("calibration lost on a reload that kept its settings")
	}
	cfg2 := cfg
	cfg2.Routing.TargetEscalationRate = 0.5
	if err := g.Apply(&cfg2); err != nil {
		t.Fatal(err)
	}
	if c2 := g.snap.Load().policy.Calibrator(); c2 == cal || c2.Target() != 0.5 {
		t.Fatal("a new target kept the old calibration")
	}
}

// TestFleetGatewaysShareThreshold: two gateways on one Redis, serving
// different traffic, end up with the same threshold through the sync loop
// started by New; Shutdown removes a gateway's window.
func TestFleetGatewaysShareThreshold(t *testing.T) {
	rdb, prefix := testRedis(t)
	mod := func(c *config.Config) {
		c.Routing.TargetEscalationRate = 0.25
		c.Routing.Calibration.Window = 200
		c.Routing.Calibration.SyncEvery = 50 * time.Millisecond
		c.Redis.URL = "redis://127.0.0.1:6379"
		c.Redis.Prefix = prefix
	}
	ga, baseA := policyGateway(t, mod, Options{Redis: rdb})
	gb, baseB := policyGateway(t, mod, Options{Redis: rdb})
	ca, cb := sdkClient(baseA), sdkClient(baseB)
	for i := 0; i < 250; i++ {
		k := (i*37)%100 + 1
		if _, _, err := ask(t, ca, "auto", strings.Repeat("a", k*40)); err != nil { // scores 0.01..1
			t.Fatal(err)
		}
		if _, _, err := ask(t, cb, "auto", strings.Repeat("b", k*10)); err != nil { // scores 0.0025..0.25
			t.Fatal(err)
		}
	}
	calA, calB := ga.snap.Load().policy.Calibrator(), gb.snap.Load().policy.Calibrator()
	// Alone, a would sit at 0.75 and b at 0.19; merged, both sit where a
	// quarter of the union escalates: about 0.5.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ta, tb := calA.Threshold(), calB.Threshold()
		if math.Abs(ta-tb) < 0.02 && ta > 0.4 && ta < 0.6 {
			t.Logf("thresholds %.4f and %.4f", ta, tb)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thresholds %.4f and %.4f did not meet near 0.5 (syncs %d/%d, errors %d/%d)", ta, tb,
				ga.calib.syncs.Load(), gb.calib.syncs.Load(), ga.calib.errors.Load(), gb.calib.errors.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := ga.CalibrationStatus(); !st.Shared || st.Peers != 1 || st.Syncs == 0 || st.Instance != ga.calib.id {
		t.Fatalf("status %+v", st)
	}
	idA := ga.calib.id
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ga.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, prefix+"calib:i:"+idA).Result(); n != 0 {
		t.Fatal("window still in Redis after Shutdown")
	}
	if ok, _ := rdb.SIsMember(ctx, prefix+"calib:instances", idA).Result(); ok {
		t.Fatal("instance still listed after Shutdown")
	}
}
