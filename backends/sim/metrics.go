package sim

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// Histogram bounds in seconds, after vLLM's, with finer low buckets because
// simulated latencies are often tiny.
var (
	ttftBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
	e2eBuckets  = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60}
)

// histogram is a lock-free fixed-bucket histogram of durations.
type histogram struct {
	bounds []float64      // upper bounds in seconds, ascending
	counts []atomic.Int64 // per bucket, not cumulative; the last is +Inf
	sum    atomic.Int64   // nanoseconds
}

func newHistogram(bounds []float64) histogram {
	return histogram{bounds: bounds, counts: make([]atomic.Int64, len(bounds)+1)}
}

func (h *histogram) observe(d time.Duration) {
	v := d.Seconds()
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

func (s *Server) serveMetrics(w http.ResponseWriter) {
	bp := getBuf()
	b := (*bp)[:0]
	b = s.appendMetric(b, "vllm:num_requests_running", "gauge", "Number of requests currently running on GPU.", s.running.Load())
	b = s.appendMetric(b, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", s.waiting.Load())
	usage := float64(s.kvInUse.Load()) / float64(s.cfg.KVCacheTokens)
	usage = min(max(usage, 0), 1)
	b = s.appendHeader(b, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.")
	b = s.appendSample(b, "vllm:kv_cache_usage_perc", "", usage)
	b = s.appendMetric(b, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", s.promptTokens.Load())
	b = s.appendMetric(b, "vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", s.generationTokens.Load())
	b = s.appendHistogram(b, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", &s.ttft)
	b = s.appendHistogram(b, "vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", &s.e2e)
	w.Header()["Content-Type"] = promContentType
	w.Write(b)
	putBuf(bp, b)
}

func (s *Server) appendHeader(b []byte, name, typ, help string) []byte {
	b = append(b, "# HELP "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = append(b, help...)
	b = append(b, "\n# TYPE "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = append(b, typ...)
	return append(b, '\n')
}

// appendSample appends `name{model_name="..."[,extra]} value`.
func (s *Server) appendSample(b []byte, name, extra string, v float64) []byte {
	b = s.appendSeries(b, name, extra)
	b = strconv.AppendFloat(b, v, 'g', -1, 64)
	return append(b, '\n')
}

// appendCount is appendSample for integer values, which 'g' would print
// in exponent form once large.
func (s *Server) appendCount(b []byte, name, extra string, v int64) []byte {
	b = s.appendSeries(b, name, extra)
	b = strconv.AppendInt(b, v, 10)
	return append(b, '\n')
}

func (s *Server) appendSeries(b []byte, name, extra string) []byte {
	b = append(b, name...)
	b = append(b, '{')
	b = append(b, s.labels...)
	if extra != "" {
		b = append(b, ',')
		b = append(b, extra...)
	}
	return append(b, "} "...)
}

func (s *Server) appendMetric(b []byte, name, typ, help string, v int64) []byte {
	b = s.appendHeader(b, name, typ, help)
	return s.appendCount(b, name, "", v)
}

func (s *Server) appendHistogram(b []byte, name, help string, h *histogram) []byte {
	b = s.appendHeader(b, name, "histogram", help)
	var cum int64
	var le []byte
	for i := range h.counts {
		cum += h.counts[i].Load()
		le = append(le[:0], `le="`...)
		if i < len(h.bounds) {
			le = strconv.AppendFloat(le, h.bounds[i], 'g', -1, 64)
		} else {
			le = append(le, "+Inf"...)
		}
		le = append(le, '"')
		b = s.appendCount(b, name+"_bucket", string(le), cum)
	}
	b = s.appendSample(b, name+"_sum", "", time.Duration(h.sum.Load()).Seconds())
	return s.appendCount(b, name+"_count", "", cum)
}
