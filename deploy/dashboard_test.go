package deploy

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// gatewayMetrics are the names the gateway exports on GET /metrics (the
// OTel Prometheus exporter without units; histograms as _bucket/_sum/_count).
var gatewayMetrics = map[string][]string{
	// name: its labels
	"gen_ai_client_operation_duration":            {"gen_ai_operation_name", "gen_ai_request_model", "gen_ai_response_model", "cascade_tier", "error_type"},
	"gen_ai_client_token_usage":                   {"gen_ai_token_type", "gen_ai_response_model", "cascade_tier"},
	"gen_ai_client_operation_time_to_first_chunk": {"cascade_tier"},
	"cascade_requests_total":                      {"cascade_tier", "cascade_outcome", "cascade_escalated"},
	"cascade_escalations_total":                   {"cascade_tier", "cascade_reason"},
	"cascade_cost_total":                          {"cascade_tier"},
	"cascade_baseline_cost_total":                 {"cascade_tier"},
	"cascade_energy_total":                        {"cascade_tier"},
	"cascade_recorder_queue_depth":                nil,
	"cascade_recorder_dropped_total":              nil,
	"cascade_breaker_state":                       {"cascade_tier", "server_address"},
	"cascade_backend_queue_depth":                 {"cascade_tier", "server_address"},
	"cascade_routing_threshold":                   nil,
	"cascade_routing_target_escalation_rate":      nil,
	"cascade_config_reloads_total":                {"result"},
}

var gatewayHistograms = []string{"gen_ai_client_operation_duration", "gen_ai_client_token_usage", "gen_ai_client_operation_time_to_first_chunk"}

// otherMetrics come from vLLM (scraped directly) and the collector's
// spanmetrics connector (namespace traces.span.metrics, unit s).
var otherMetrics = []string{
	"up",
	"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
	"vllm:prompt_tokens_total", "vllm:generation_tokens_total",
	"vllm:time_to_first_token_seconds_bucket", "vllm:time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_count",
	"vllm:e2e_request_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_sum", "vllm:e2e_request_latency_seconds_count",
	"traces_span_metrics_calls_total",
	"traces_span_metrics_duration_seconds_bucket", "traces_span_metrics_duration_seconds_sum", "traces_span_metrics_duration_seconds_count",
}

// knownMetric reports whether name is exported, and which gateway metric it
// belongs to ("" for vLLM and span metrics).
func knownMetric(name string) (base string, ok bool) {
	if _, ok := gatewayMetrics[name]; ok {
		return name, true
	}
	for _, h := range gatewayHistograms {
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			if name == h+s {
				return h, true
			}
		}
	}
	return "", slices.Contains(otherMetrics, name)
}

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	promMatchers = regexp.MustCompile(`\{([^}]*)\}`)
	promOffset   = regexp.MustCompile(`\boffset\s+-?[0-9a-z$_]+`)
	promIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promLabel    = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)`)
	promKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "inf": true, "nan": true, "group_left": true, "group_right": true}
)

// promNames returns the metric names and label names a PromQL expression
// uses. It is a scanner, not a parser: enough for dashboards.
func promNames(expr string) (metrics, labelNames []string) {
	s := promString.ReplaceAllString(expr, `""`)
	s = promRange.ReplaceAllString(s, "")
	s = promOffset.ReplaceAllString(s, "")
	for _, m := range promGrouping.FindAllStringSubmatch(s, -1) {
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labelNames = append(labelNames, l)
			}
		}
	}
	s = promGrouping.ReplaceAllString(s, " ")
	for _, m := range promMatchers.FindAllStringSubmatch(s, -1) {
		for _, l := range promLabel.FindAllStringSubmatch(m[1], -1) {
			labelNames = append(labelNames, l[1])
		}
	}
	s = promMatchers.ReplaceAllString(s, " ")
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || promKeywords[strings.ToLower(id)] {
			continue // a function, an aggregation or an operator
		}
		if loc[0] > 0 && (s[loc[0]-1] == '.' || (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9')) {
			continue // part of a number like 1e3
		}
		metrics = append(metrics, id)
	}
	return metrics, labelNames
}

func TestPromNames(t *testing.T) {
	m, l := promNames(`histogram_quantile(0.95, sum by (le, cascade_tier) (rate(gen_ai_client_operation_duration_bucket{cascade_tier=~"$tier", x!="a,b}"}[$__rate_interval]))) / on(cascade_tier) group_left foo_total offset 5m and bar`)
	if !slices.Equal(m, []string{"gen_ai_client_operation_duration_bucket", "foo_total", "bar"}) {
		t.Errorf("metrics = %v", m)
	}
	if !slices.Equal(l, []string{"le", "cascade_tier", "cascade_tier", "cascade_tier", "x"}) {
		t.Errorf("labels = %v", l)
	}
	m, _ = promNames(`sum(vllm:num_requests_waiting) * 60 + 1e3`)
	if !slices.Equal(m, []string{"vllm:num_requests_waiting"}) {
		t.Errorf("metrics = %v", m)
	}
}

type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

func TestDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana/cascade-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string         `json:"uid"`
		Title      string         `json:"title"`
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Error("dashboard needs a uid and a title (provisioning and links use them)")
	}
	var ds struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
		} `yaml:"datasources"`
	}
	provisioned := map[string]string{}
	if b, err := os.ReadFile("grafana/provisioning/datasources/datasources.yaml"); err == nil {
		if err := yaml.Unmarshal(b, &ds); err != nil {
			t.Fatal(err)
		}
		for _, d := range ds.Datasources {
			provisioned[d.UID] = d.Type
		}
	}
	knownLabels := map[string]bool{"le": true, "instance": true, "job": true}
	for _, ls := range gatewayMetrics {
		for _, l := range ls {
			knownLabels[l] = true
		}
	}
	used := map[string]bool{}
	ids := map[int]string{}
	var walk func(ps []grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
			}
			ids[p.ID] = p.Title
			if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no queries", p.Title)
			}
			if p.Datasource == nil || provisioned[p.Datasource.UID] != p.Datasource.Type {
				t.Errorf("panel %q: datasource %+v is not provisioned (%v)", p.Title, p.Datasource, provisioned)
			}
			for _, tg := range p.Targets {
				metrics, labelNames := promNames(tg.Expr)
				if len(metrics) == 0 {
					t.Errorf("panel %q: query %q reads no metric", p.Title, tg.Expr)
				}
				gatewayOnly := true
				for _, m := range metrics {
					base, ok := knownMetric(m)
					if !ok {
						t.Errorf("panel %q: %q is not a metric the gateway, vLLM or the span metrics export", p.Title, m)
					}
					if base == "" {
						gatewayOnly = false
					}
					used[base] = true
				}
				if gatewayOnly {
					for _, l := range labelNames {
						if !knownLabels[l] {
							t.Errorf("panel %q: label %q is on no gateway metric", p.Title, l)
						}
					}
				}
			}
		}
	}
	walk(dash.Panels)
	// What the dashboard is for: each of these has a panel.
	for _, m := range []string{"cascade_cost_total", "cascade_baseline_cost_total", "cascade_escalations_total",
		"cascade_routing_target_escalation_rate", "gen_ai_client_operation_duration", "gen_ai_client_operation_time_to_first_chunk",
		"gen_ai_client_token_usage", "cascade_energy_total", "cascade_breaker_state", "cascade_recorder_dropped_total",
		"cascade_backend_queue_depth"} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
	if !strings.Contains(string(data), "histogram_quantile(0.99") || !strings.Contains(string(data), "histogram_quantile(0.5") {
		t.Error("latency panels need p50 and p99")
	}
	if !strings.Contains(string(data), "traces_span_metrics_") {
		t.Error("no panel from the collector's span metrics")
	}
}
