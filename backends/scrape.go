package backends

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/cascade-gateway/cascade/config"
)

// Load is what an endpoint last reported about its own work, read from its
// Prometheus metrics.
type Load struct {
	// Running is the number of requests the server is generating for now
	// (vllm:num_requests_running, tgi_batch_current_size,
	// llamacpp:requests_processing), summed over label sets.
	Running float64
	// Waiting is the number of requests queued on the server
	// (vllm:num_requests_waiting, tgi_queue_size, llamacpp:requests_deferred).
	Waiting float64
	// KVCacheUsage is the KV cache's fill ratio in [0, 1]
	// (vllm:kv_cache_usage_perc, vllm:gpu_cache_usage_perc,
	// llamacpp:kv_cache_usage_ratio), the largest over label sets.
	KVCacheUsage float64
	// Server names the family whose metric names were found: "vllm", "tgi",
	// "llamacpp", or "" when none was.
	Server string
	// ScrapedAt is when the scrape ended; zero before the first one.
	ScrapedAt time.Time
	// Err is why the last scrape failed, "" when it succeeded.
	Err string
}

// Load returns the endpoint's last scraped load (zero before any scrape).
func (e *Endpoint) Load() Load {
	if l := e.load.Load(); l != nil {
		return *l
	}
	return Load{}
}

// queueFromLoad is the work an endpoint has that this gateway does not
// already count live as in-flight: running + waiting as the server reported
// them, minus this gateway's in-flight requests at the time of the scrape
// (those are counted by the balancer directly and would otherwise count
// twice). What remains is the backlog other clients and gateway replicas put
// on the server. It never goes below 0.
func queueFromLoad(l Load, inflight int64) int64 {
	q := int64(math.Round(l.Running+l.Waiting)) - inflight
	if q < 0 {
		return 0
	}
	return q
}

// Scraper reads every endpoint's metrics periodically, off the request path,
// and feeds the balancer through Endpoint.SetQueue. Update follows config
// reloads; Stop ends every scrape loop and waits for them.
type Scraper struct {
	client *http.Client

	mu       sync.Mutex
	interval time.Duration
	path     string
	targets  map[*Endpoint]context.CancelFunc
	stopped  bool
	wg       sync.WaitGroup
}

// maxMetricsBytes bounds the metrics page read per scrape.
const maxMetricsBytes = 8 << 20

// NewScraper returns a scraper with no targets.
func NewScraper() *Scraper {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     time.Minute,
	}
	return &Scraper{client: &http.Client{Transport: tr}, targets: map[*Endpoint]context.CancelFunc{}}
}

// Update makes the scraped set eps: new endpoints start being scraped,
// endpoints no longer listed stop. A changed interval or path restarts all.
// A negative interval stops scraping and clears the reported queues.
func (s *Scraper) Update(eps []*Endpoint, sc config.Scrape) {
	interval, path := sc.Interval, sc.Path
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	if interval != s.interval || path != s.path {
		for e, cancel := range s.targets {
			cancel()
			delete(s.targets, e)
		}
		s.interval, s.path = interval, path
	}
	keep := make(map[*Endpoint]bool, len(eps))
	if interval > 0 {
		for _, e := range eps {
			keep[e] = true
		}
	}
	for e, cancel := range s.targets {
		if !keep[e] {
			cancel()
			delete(s.targets, e)
			e.SetQueue(0)
		}
	}
	for e := range keep {
		if _, ok := s.targets[e]; ok {
			continue
		}
		target, err := metricsURL(e.URL, path)
		if err != nil { // cannot happen on a validated config
			e.load.Store(&Load{Err: err.Error()})
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.targets[e] = cancel
		s.wg.Add(1)
		go s.loop(ctx, e, target, interval)
	}
}

// Stop ends all scrape loops, waits for them and closes idle connections.
// Later Updates do nothing.
func (s *Scraper) Stop() {
	s.mu.Lock()
	s.stopped = true
	for e, cancel := range s.targets {
		cancel()
		delete(s.targets, e)
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.client.CloseIdleConnections()
}

// metricsURL is scheme://host of the endpoint's base URL plus path.
func metricsURL(base, path string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	if u.Host == "" {
		return "", fmt.Errorf("endpoint %q has no host", base)
	}
	return u.Scheme + "://" + u.Host + path, nil
}

// loop scrapes e every interval until ctx ends. After consecutive failures it
// waits longer (up to 8 intervals), so a server without metrics costs little.
func (s *Scraper) loop(ctx context.Context, e *Endpoint, target string, interval time.Duration) {
	defer s.wg.Done()
	timeout := min(max(interval, time.Second), 5*time.Second)
	failures := 0
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l, err := s.scrape(ctx, e, target, timeout)
		if ctx.Err() != nil {
			return
		}
		l.ScrapedAt = time.Now()
		if err != nil {
			failures++
			l = Load{ScrapedAt: l.ScrapedAt, Err: err.Error()}
			e.SetQueue(0)
		} else {
			failures = 0
			e.SetQueue(queueFromLoad(l, e.InFlight()))
		}
		e.load.Store(&l)
		t.Reset(interval * time.Duration(min(1<<min(failures, 3), 8)))
	}
}

func (s *Scraper) scrape(ctx context.Context, e *Endpoint, target string, timeout time.Duration) (Load, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return Load{}, err
	}
	req.Header.Set("Accept", "text/plain")
	if e.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+e.apiKey)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return Load{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return Load{}, fmt.Errorf("GET %s: status %d", target, resp.StatusCode)
	}
	l, err := ParseLoad(io.LimitReader(resp.Body, maxMetricsBytes))
	if err != nil {
		return Load{}, fmt.Errorf("GET %s: %w", target, err)
	}
	return l, nil
}

// metric kinds ParseLoad reads.
const (
	kindRunning = iota + 1
	kindWaiting
	kindKV
)

type loadMetric struct {
	kind   int
	server string
}

// loadMetrics maps the metric names ParseLoad understands to what they mean.
var loadMetrics = map[string]loadMetric{
	"vllm:num_requests_running":     {kindRunning, "vllm"},
	"vllm:num_requests_waiting":     {kindWaiting, "vllm"},
	"vllm:kv_cache_usage_perc":      {kindKV, "vllm"},
	"vllm:gpu_cache_usage_perc":     {kindKV, "vllm"}, // before vLLM 0.10
	"tgi_batch_current_size":        {kindRunning, "tgi"},
	"tgi_queue_size":                {kindWaiting, "tgi"},
	"llamacpp:requests_processing":  {kindRunning, "llamacpp"},
	"llamacpp:requests_deferred":    {kindWaiting, "llamacpp"},
	"llamacpp:kv_cache_usage_ratio": {kindKV, "llamacpp"},
}

// ParseLoad reads a Prometheus text exposition and sums the load metrics it
// knows (see Load); other lines, comments and missing metrics are ignored.
// Samples with unparsable values are skipped.
func ParseLoad(r io.Reader) (Load, error) {
	var l Load
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 16<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || (line[0] != 'v' && line[0] != 't' && line[0] != 'l') {
			continue // comments, blank lines and everything else
		}
		end := bytes.IndexAny(line, "{ \t")
		if end <= 0 {
			continue
		}
		m, ok := loadMetrics[string(line[:end])] // no allocation: map lookup by converted bytes
		if !ok {
			continue
		}
		v, ok := sampleValue(line[end:])
		if !ok {
			continue
		}
		l.Server = m.server
		switch m.kind {
		case kindRunning:
			l.Running += v
		case kindWaiting:
			l.Waiting += v
		case kindKV:
			l.KVCacheUsage = max(l.KVCacheUsage, v)
		}
	}
	if err := sc.Err(); err != nil {
		return Load{}, err
	}
	return l, nil
}

// sampleValue parses the value of a sample line after the metric name:
// optional {labels}, blanks, the value, optionally a timestamp.
func sampleValue(rest []byte) (float64, bool) {
	if len(rest) > 0 && rest[0] == '{' {
		i, quoted := 1, false
		for ; i < len(rest); i++ {
			c := rest[i]
			if quoted {
				if c == '\\' {
					i++
				} else if c == '"' {
					quoted = false
				}
				continue
			}
			if c == '"' {
				quoted = true
			} else if c == '}' {
				break
			}
		}
		if i >= len(rest) {
			return 0, false
		}
		rest = rest[i+1:]
	}
	rest = bytes.TrimLeft(rest, " \t")
	if end := bytes.IndexAny(rest, " \t"); end >= 0 {
		rest = rest[:end]
	}
	v, err := strconv.ParseFloat(string(rest), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}
