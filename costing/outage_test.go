package costing

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/config"
)

// outageEnv overrides how long TestRecorderRedisKilledAndRestarted keeps
// Redis down, e.g. CASCADE_REDIS_OUTAGE=15s.
const outageEnv = "CASCADE_REDIS_OUTAGE"

// How long Redis stays down: the full outage the recorder must survive in
// the normal run (the test mostly sleeps: ~0.1 core), a shorter one with
// -short.
const (
	fullOutage  = 60 * time.Second
	shortOutage = 15 * time.Second
)

// A redis-server of the test's own is killed (SIGKILL) while records arrive
// at 200 per second, and restarted on the same port after the outage: every
// record is written once, none lost, none twice.
func TestRecorderRedisKilledAndRestarted(t *testing.T) {
	outage := fullOutage
	if testing.Short() {
		outage = shortOutage
	}
	if v := os.Getenv(outageEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a duration such as 60s", outageEnv, v)
		}
		outage = d
	}
	const rate = 200 // records per second
	const before, after = 2 * time.Second, 3 * time.Second

	srv := startRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.addr})
	defer rdb.Close()
	logs := captureLogs(t)
	const prefix = "cascade:"
	r := NewRedisRecorder(recorderClient(t, srv.addr), prefix, config.Recorder{FlushInterval: 50 * time.Millisecond})
	at := time.Now().Truncate(time.Hour) // every record in one hour's rollups

	sent := 0
	start := time.Now()
	killed, restarted := false, false
	var queuedAtRestart RecorderStats
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for now := range tick.C {
		el := now.Sub(start)
		if el >= before+outage+after {
			break
		}
		for ; sent < int(el.Seconds()*rate); sent++ {
			r.Record(Record{Time: at, RequestID: fmt.Sprint("req-", sent), Tier: "small", Model: "m",
				InputTokens: 10, OutputTokens: 2, CostMicroUSD: 5, Latency: 100 * time.Millisecond})
		}
		switch {
		case !killed && el >= before:
			srv.kill()
			killed = true
		case !restarted && el >= before+outage:
			queuedAtRestart = r.Stats()
			srv.start()
			restarted = true
		}
	}
	t.Logf("outage %v at %d records/s: %d sent; at restart %+v", outage, rate, sent, queuedAtRestart)
	if queuedAtRestart.Queued < int64(outage.Seconds()*rate)*9/10 {
		t.Fatalf("only %d records queued after %v down: was Redis down at all?", queuedAtRestart.Queued, outage)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Close(ctx); err != nil {
		t.Fatalf("Close: %v (%+v)", err, r.Stats())
	}
	st := r.Stats()
	t.Logf("after close: %+v", st)
	if st.Written != int64(sent) || st.Dropped != 0 || st.Queued != 0 {
		t.Fatalf("stats %+v, want all %d written", st, sent)
	}
	assertStream(t, rdb, prefix+"req:"+at.UTC().Format("20060102"), sent)
	for _, k := range []string{"h:all:", "h:tier:small:", "h:model:m:"} {
		h := hgetInts(t, rdb, prefix+k+at.UTC().Format("2006010215"))
		if h["requests"] != int64(sent) || h["input_tokens"] != 10*int64(sent) || h["cost_uusd"] != 5*int64(sent) {
			t.Errorf("%s rollup %v, want %d requests", k, h, sent)
		}
	}
	if m := hgetInts(t, rdb, prefix+"m:all:"+at.UTC().Format("200601021504")); m["requests"] != int64(sent) {
		t.Errorf("minute rollup %v, want %d requests", m, sent)
	}
	lost, back := logs.find(msgLost), logs.find(msgBack)
	if len(lost) != 1 || len(back) != 1 {
		t.Fatalf("%d lost and %d back lines for one outage:\n%v\n%v", len(lost), len(back), lost, back)
	}
	if d, _ := back[0]["down_for"].(time.Duration); d < outage*9/10 || d > outage+5*time.Second {
		t.Errorf("back line says down for %v, outage was %v", d, outage)
	}
	if q, _ := back[0]["queued"].(int64); q < queuedAtRestart.Queued*9/10 {
		t.Errorf("back line says %d queued, %d were at the restart", q, queuedAtRestart.Queued)
	}
}

// redisServer is a redis-server of the test's own on a free port. Every
// write is synced to its append-only file before the reply, so a SIGKILL
// loses nothing it acknowledged.
type redisServer struct {
	t    testing.TB
	bin  string
	dir  string
	addr string
	cmd  *exec.Cmd
}

// startRedisServer starts a redis-server, or skips the test when there is
// none on PATH (fails under CI=true).
func startRedisServer(t testing.TB) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server not on PATH (%v): CI must run this test", err)
		}
		t.Skipf("redis-server not on PATH (%v): install Redis to run this test", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &redisServer{t: t, bin: bin, dir: t.TempDir(), addr: ln.Addr().String()}
	ln.Close()
	s.start()
	t.Cleanup(s.kill)
	return s
}

// start runs redis-server on s.addr with the data s.dir holds, and waits
// until it answers.
func (s *redisServer) start() {
	s.t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	log, err := os.OpenFile(filepath.Join(s.dir, "redis.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	defer log.Close()
	s.cmd = exec.Command(s.bin, "--bind", "127.0.0.1", "--port", port, "--dir", s.dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always")
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server on %s does not answer:\n%s", s.addr, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill stops redis-server with SIGKILL: no shutdown, no final save.
func (s *redisServer) kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
	s.cmd = nil
}
