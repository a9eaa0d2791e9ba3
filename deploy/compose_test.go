package deploy

import (
	"bytes"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cascade-gateway/cascade/config"
)

// composeFile is the part of the Compose Specification this stack uses.
// Decoding is strict: a misspelt or misplaced key fails.
type composeFile struct {
	Name     string                     `yaml:"name"`
	Services map[string]composeService  `yaml:"services"`
	Volumes  map[string]*composeVolume  `yaml:"volumes"`
	Networks map[string]*composeNetwork `yaml:"networks"`
	// Extensions holds the x-* keys (YAML anchors for shared settings).
	Extensions map[string]any `yaml:",inline"`
}

type composeVolume struct {
	Driver string `yaml:"driver"`
}

type composeNetwork struct {
	Driver string `yaml:"driver"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Profiles        []string          `yaml:"profiles"`
	Command         []string          `yaml:"command"`
	Ports           []string          `yaml:"ports"`
	Environment     map[string]string `yaml:"environment"`
	Volumes         []string          `yaml:"volumes"`
	IPC             string            `yaml:"ipc"`
	Restart         string            `yaml:"restart"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
	Networks        map[string]struct {
		Aliases []string `yaml:"aliases"`
	} `yaml:"networks"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test        []string `yaml:"test"`
		Interval    string   `yaml:"interval"`
		Timeout     string   `yaml:"timeout"`
		Retries     int      `yaml:"retries"`
		StartPeriod string   `yaml:"start_period"`
	} `yaml:"healthcheck"`
	Deploy *struct {
		Resources struct {
			Reservations struct {
				Devices []struct {
					Driver       string   `yaml:"driver"`
					Count        any      `yaml:"count"`
					DeviceIDs    []string `yaml:"device_ids"`
					Capabilities []string `yaml:"capabilities"`
				} `yaml:"devices"`
			} `yaml:"reservations"`
		} `yaml:"resources"`
	} `yaml:"deploy"`
}

func (s composeService) active(profile string) bool {
	return len(s.Profiles) == 0 || slices.Contains(s.Profiles, profile)
}

func loadCompose(t *testing.T) *composeFile {
	t.Helper()
	data, err := os.ReadFile("docker-compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	for k := range c.Extensions {
		if !strings.HasPrefix(k, "x-") {
			t.Errorf("docker-compose.yaml: unknown top-level key %q", k)
		}
	}
	return &c
}

// composeEnv expands ${VAR}, ${VAR:-default} and ${VAR:?msg} the way compose
// does with an empty environment, failing on required variables.
var composeVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}`)

func composeDefault(s string) (string, error) {
	var err error
	out := composeVar.ReplaceAllStringFunc(s, func(m string) string {
		p := composeVar.FindStringSubmatch(m)
		if p[2] == ":?" || p[2] == "?" {
			err = fmt.Errorf("%s is required: compose would refuse to start either profile without it", p[1])
		}
		return p[3]
	})
	return out, err
}

// hostsIn returns the service names and aliases reachable in a profile.
func (c *composeFile) hostsIn(profile string) map[string]string {
	h := map[string]string{}
	for name, s := range c.Services {
		if !s.active(profile) {
			continue
		}
		h[name] = name
		for _, n := range s.Networks {
			for _, a := range n.Aliases {
				h[a] = name
			}
		}
	}
	return h
}

func TestCompose(t *testing.T) {
	c := loadCompose(t)
	profiles := map[string][]string{}
	for name, s := range c.Services {
		for _, p := range s.Profiles {
			profiles[p] = append(profiles[p], name)
		}
	}
	for _, p := range []string{"gpu", "sim"} {
		if len(profiles[p]) == 0 {
			t.Errorf("no service in profile %q", p)
		}
	}
	for _, name := range []string{"redis", "otel-collector", "jaeger", "prometheus", "grafana"} {
		s, ok := c.Services[name]
		if !ok {
			t.Errorf("no %s service", name)
		} else if len(s.Profiles) != 0 {
			t.Errorf("%s is in profiles %v; both profiles need it", name, s.Profiles)
		}
	}
	for profile := range profiles {
		hosts := c.hostsIn(profile)
		// An alias may name one service per profile, or the address is ambiguous.
		seen := map[string]string{}
		for name, s := range c.Services {
			if !s.active(profile) {
				continue
			}
			for _, n := range s.Networks {
				for _, a := range n.Aliases {
					if other, dup := seen[a]; dup {
						t.Errorf("profile %s: alias %q on both %s and %s", profile, a, other, name)
					}
					seen[a] = name
				}
			}
		}
		gateways := 0
		for name, s := range c.Services {
			if !s.active(profile) {
				continue
			}
			for dep := range s.DependsOn {
				d, ok := c.Services[dep]
				if !ok {
					t.Errorf("%s depends on %q, which is not a service", name, dep)
				} else if !d.active(profile) {
					t.Errorf("profile %s: %s depends on %s, which that profile does not start", profile, name, dep)
				}
			}
			if cfg := checkGatewayService(t, name, s, hosts); cfg != nil {
				gateways++
			}
		}
		if gateways != 1 {
			t.Errorf("profile %s starts %d gateways, want 1", profile, gateways)
		}
	}
	for name, s := range c.Services {
		checkServiceBasics(t, c, name, s)
	}
	gpuModels := 0
	for name, s := range c.Services {
		if !strings.HasPrefix(s.Image, "vllm/vllm-openai:") {
			continue
		}
		gpuModels++
		if !slices.Equal(s.Profiles, []string{"gpu"}) {
			t.Errorf("%s: vLLM belongs to profile gpu only, has %v", name, s.Profiles)
		}
		checkVLLMService(t, name, s)
	}
	if gpuModels != 2 {
		t.Errorf("%d vLLM services, want 2 (small and large)", gpuModels)
	}
	for name, s := range c.Services {
		if slices.Contains(s.Command, "sim") && !slices.Equal(s.Profiles, []string{"sim"}) {
			t.Errorf("%s runs the simulator outside profile sim: %v", name, s.Profiles)
		}
	}
}

func checkServiceBasics(t *testing.T, c *composeFile, name string, s composeService) {
	t.Helper()
	if s.Image == "" && s.Build == nil {
		t.Errorf("%s has neither image nor build", name)
	}
	if s.Image != "" && !strings.Contains(s.Image, ":") {
		t.Errorf("%s: image %q is not pinned to a tag", name, s.Image)
	}
	if s.Build != nil {
		df := filepath.Join(s.Build.Context, s.Build.Dockerfile)
		if _, err := os.Stat(df); err != nil {
			t.Errorf("%s: build dockerfile: %v", name, err)
		}
	}
	for _, v := range s.Volumes {
		src, _, ok := strings.Cut(v, ":")
		if !ok {
			t.Errorf("%s: volume %q has no target", name, v)
			continue
		}
		if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
			if _, err := os.Stat(src); err != nil {
				t.Errorf("%s: bind mount source: %v", name, err)
			}
		} else if _, ok := c.Volumes[src]; !ok {
			t.Errorf("%s: named volume %q is not declared under volumes", name, src)
		}
	}
	for k, v := range s.Environment {
		if _, err := composeDefault(v); err != nil {
			t.Errorf("%s: environment %s: %v", name, k, err)
		}
	}
	if h := s.Healthcheck; h != nil {
		if len(h.Test) < 2 || (h.Test[0] != "CMD" && h.Test[0] != "CMD-SHELL") {
			t.Errorf("%s: healthcheck test %v must start with CMD or CMD-SHELL", name, h.Test)
		}
		for _, d := range []string{h.Interval, h.Timeout, h.StartPeriod} {
			if d == "" {
				continue
			}
			if _, err := time.ParseDuration(d); err != nil {
				t.Errorf("%s: healthcheck duration %q: %v", name, d, err)
			}
		}
		// The cascade image has no shell: its checks must call the binary.
		if s.Image == "cascade:local" && h.Test[1] != "/cascade" {
			t.Errorf("%s: the cascade image has no shell or curl; health checks run /cascade healthcheck, got %v", name, h.Test)
		}
	}
	for dep, d := range s.DependsOn {
		if d.Condition == "service_healthy" && c.Services[dep].Healthcheck == nil {
			t.Errorf("%s waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
		}
	}
}

// checkGatewayService checks a service running `cascade serve`; it returns
// its config, or nil when the service is not a gateway.
func checkGatewayService(t *testing.T, name string, s composeService, hosts map[string]string) *config.Config {
	t.Helper()
	if len(s.Command) == 0 || s.Command[0] != "serve" {
		return nil
	}
	if s.Healthcheck == nil || !slices.Contains(s.Healthcheck.Test, "healthcheck") {
		t.Errorf("gateway %s has no healthcheck calling `cascade healthcheck`", name)
	}
	cfgPath := flagValue(s.Command, "config")
	var src string
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == cfgPath {
			src = parts[0]
		}
	}
	if src == "" {
		t.Errorf("gateway %s: --config %q is not a mounted file", name, cfgPath)
		return nil
	}
	cfg, err := config.LoadFile(src)
	if err != nil {
		t.Errorf("gateway %s: %v", name, err)
		return nil
	}
	host, port, _ := net.SplitHostPort(cfg.Listen)
	if host != "0.0.0.0" && host != "" && host != "::" {
		t.Errorf("gateway %s: %s listens on %q; other containers cannot reach it", name, src, cfg.Listen)
	}
	if !slices.ContainsFunc(s.Ports, func(p string) bool { return strings.HasSuffix(p, ":"+port) }) {
		t.Errorf("gateway %s: port %s is not published (%v)", name, port, s.Ports)
	}
	reach := func(what, addr string) {
		t.Helper()
		h := addr
		if u, err := url.Parse(addr); err == nil && u.Host != "" {
			h = u.Host
		}
		hn, _, err := net.SplitHostPort(h)
		if err != nil {
			hn = h
		}
		if _, ok := hosts[hn]; !ok {
			t.Errorf("gateway %s: %s %q: no service or alias %q in its profile", name, what, addr, hn)
		}
	}
	for _, tier := range cfg.Tiers {
		for _, e := range tier.Endpoints {
			reach("tier "+tier.Name+" endpoint", e.URL)
		}
	}
	if cfg.Redis.URL == "" {
		t.Errorf("gateway %s: no redis.url", name)
	} else {
		reach("redis.url", cfg.Redis.URL)
	}
	if cfg.Telemetry.OTLPEndpoint == "" {
		t.Errorf("gateway %s: no telemetry.otlp_endpoint; traces would not reach the collector", name)
	} else {
		reach("telemetry.otlp_endpoint", cfg.Telemetry.OTLPEndpoint)
	}
	if _, ok := s.Environment[cfg.Admin.TokenEnv]; cfg.Admin.TokenEnv != "" && !ok {
		t.Errorf("gateway %s: config reads $%s, the service does not pass it", name, cfg.Admin.TokenEnv)
	}
	grace, err := time.ParseDuration(flagValue(s.Command, "shutdown-grace"))
	if err != nil || grace < cfg.Timeouts.Total {
		t.Errorf("gateway %s: --shutdown-grace %v (%v) shorter than timeouts.total %v", name, grace, err, cfg.Timeouts.Total)
	}
	stop, err := time.ParseDuration(s.StopGracePeriod)
	if err != nil || stop <= grace {
		t.Errorf("gateway %s: stop_grace_period %q must exceed --shutdown-grace %v", name, s.StopGracePeriod, grace)
	}
	return cfg
}

func checkVLLMService(t *testing.T, name string, s composeService) {
	t.Helper()
	if s.Deploy == nil || len(s.Deploy.Resources.Reservations.Devices) == 0 {
		t.Errorf("%s reserves no GPU", name)
		return
	}
	gpus := 0
	for _, d := range s.Deploy.Resources.Reservations.Devices {
		if d.Driver != "nvidia" || !slices.Contains(d.Capabilities, "gpu") {
			t.Errorf("%s: device reservation %+v is not an NVIDIA GPU", name, d)
		}
		if d.Count != nil && d.DeviceIDs != nil {
			t.Errorf("%s: count and device_ids are mutually exclusive", name)
		}
		gpus += len(d.DeviceIDs)
		if n, ok := d.Count.(int); ok {
			gpus += n
		}
	}
	if tp := flagValue(s.Command, "tensor-parallel-size"); tp != "" && tp != fmt.Sprint(gpus) {
		t.Errorf("%s: --tensor-parallel-size %s with %d GPUs reserved", name, tp, gpus)
	}
	if flagValue(s.Command, "model") == "" || flagValue(s.Command, "served-model-name") == "" {
		t.Errorf("%s: needs --model and --served-model-name", name)
	}
	if _, ok := s.Environment["HF_TOKEN"]; !ok {
		t.Errorf("%s: no HF_TOKEN (Llama weights are gated)", name)
	}
	if s.IPC != "host" {
		t.Errorf("%s: ipc: host is needed for tensor-parallel shared memory", name)
	}
	if s.Healthcheck == nil {
		t.Errorf("%s has no healthcheck", name)
	}
}

// TestComposeServedModels: each profile's gateway asks its backends for
// models they serve.
func TestComposeServedModels(t *testing.T) {
	c := loadCompose(t)
	for _, profile := range []string{"gpu", "sim"} {
		hosts := c.hostsIn(profile)
		for name, s := range c.Services {
			if !s.active(profile) || len(s.Command) == 0 || s.Command[0] != "serve" {
				continue
			}
			var src string
			for _, v := range s.Volumes {
				if parts := strings.Split(v, ":"); len(parts) >= 2 && parts[1] == flagValue(s.Command, "config") {
					src = parts[0]
				}
			}
			cfg, err := config.LoadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			for _, tier := range cfg.Tiers {
				for _, e := range tier.Endpoints {
					u, _ := url.Parse(e.URL)
					backend := c.Services[hosts[u.Hostname()]]
					served := flagValue(backend.Command, "served-model-name")
					if served == "" {
						served = flagValue(backend.Command, "model")
					}
					if served != e.Model {
						t.Errorf("profile %s, %s: tier %s asks %s for %q, it serves %q", profile, name, tier.Name, u.Host, e.Model, served)
					}
					_, port, _ := net.SplitHostPort(u.Host)
					listen := flagValue(backend.Command, "listen")
					if listen == "" {
						listen = ":" + flagValue(backend.Command, "port")
					}
					if _, lp, _ := net.SplitHostPort(listen); lp != port {
						t.Errorf("profile %s: %s listens on %q, the gateway calls port %s", profile, hosts[u.Hostname()], listen, port)
					}
				}
			}
		}
	}
}

// TestObservabilityConfigs checks Prometheus, the collector and Grafana
// provisioning against the compose services.
func TestObservabilityConfigs(t *testing.T) {
	c := loadCompose(t)
	allHosts := map[string]bool{}
	for _, p := range []string{"gpu", "sim"} {
		for h := range c.hostsIn(p) {
			allHosts[h] = true
		}
	}
	// Prometheus: every target is a service in both profiles.
	var prom struct {
		Global        map[string]string `yaml:"global"`
		ScrapeConfigs []struct {
			JobName        string `yaml:"job_name"`
			MetricsPath    string `yaml:"metrics_path"`
			ScrapeInterval string `yaml:"scrape_interval"`
			StaticConfigs  []struct {
				Targets []string          `yaml:"targets"`
				Labels  map[string]string `yaml:"labels"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	strictYAML(t, "prometheus.yaml", &prom)
	jobs := map[string]bool{}
	for _, sc := range prom.ScrapeConfigs {
		jobs[sc.JobName] = true
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				h, _, err := net.SplitHostPort(tg)
				if err != nil {
					t.Errorf("prometheus job %s: target %q: %v", sc.JobName, tg, err)
					continue
				}
				for _, p := range []string{"gpu", "sim"} {
					if _, ok := c.hostsIn(p)[h]; !ok {
						t.Errorf("prometheus job %s: %s does not exist in profile %s", sc.JobName, h, p)
					}
				}
			}
		}
	}
	for _, j := range []string{"cascade", "vllm"} {
		if !jobs[j] {
			t.Errorf("prometheus does not scrape %s", j)
		}
	}

	// Collector: pipelines use only declared components; spanmetrics feeds metrics.
	var col struct {
		Receivers  map[string]any `yaml:"receivers"`
		Processors map[string]any `yaml:"processors"`
		Exporters  map[string]any `yaml:"exporters"`
		Connectors map[string]any `yaml:"connectors"`
		Service    struct {
			Pipelines map[string]struct {
				Receivers  []string `yaml:"receivers"`
				Processors []string `yaml:"processors"`
				Exporters  []string `yaml:"exporters"`
			} `yaml:"pipelines"`
		} `yaml:"service"`
	}
	strictYAML(t, "otel-collector.yaml", &col)
	var spanIn, spanOut, traces bool
	for pname, p := range col.Service.Pipelines {
		for _, r := range p.Receivers {
			_, rec := col.Receivers[r]
			_, con := col.Connectors[r]
			if !rec && !con {
				t.Errorf("collector pipeline %s: receiver %q not declared", pname, r)
			}
			if r == "spanmetrics" && strings.HasPrefix(pname, "metrics") {
				spanIn = true
			}
		}
		for _, pr := range p.Processors {
			if _, ok := col.Processors[pr]; !ok {
				t.Errorf("collector pipeline %s: processor %q not declared", pname, pr)
			}
		}
		for _, e := range p.Exporters {
			_, exp := col.Exporters[e]
			_, con := col.Connectors[e]
			if !exp && !con {
				t.Errorf("collector pipeline %s: exporter %q not declared", pname, e)
			}
			if e == "spanmetrics" && strings.HasPrefix(pname, "traces") {
				spanOut = true
			}
		}
		if strings.HasPrefix(pname, "traces") && slices.Contains(p.Receivers, "otlp") {
			traces = true
		}
	}
	if !spanIn || !spanOut || !traces {
		t.Errorf("collector: otlp traces pipeline %v, spanmetrics out of traces %v, into metrics %v", traces, spanOut, spanIn)
	}
	for name, e := range col.Exporters {
		m, _ := e.(map[string]any)
		if ep, _ := m["endpoint"].(string); ep != "" && !strings.HasPrefix(ep, "0.0.0.0") {
			h, _, _ := net.SplitHostPort(ep)
			if !allHosts[h] {
				t.Errorf("collector exporter %s sends to %q, not a compose service", name, ep)
			}
		}
	}

	// Grafana: provisioned datasources and dashboards directory match the mounts.
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name      string         `yaml:"name"`
			UID       string         `yaml:"uid"`
			Type      string         `yaml:"type"`
			Access    string         `yaml:"access"`
			URL       string         `yaml:"url"`
			IsDefault bool           `yaml:"isDefault"`
			JSONData  map[string]any `yaml:"jsonData"`
		} `yaml:"datasources"`
	}
	strictYAML(t, "grafana/provisioning/datasources/datasources.yaml", &ds)
	for _, d := range ds.Datasources {
		u, err := url.Parse(d.URL)
		if err != nil || !allHosts[u.Hostname()] {
			t.Errorf("grafana datasource %s: %q is not a compose service", d.Name, d.URL)
		}
	}
	var dp struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name            string `yaml:"name"`
			Folder          string `yaml:"folder"`
			Type            string `yaml:"type"`
			DisableDeletion bool   `yaml:"disableDeletion"`
			AllowUIUpdates  bool   `yaml:"allowUiUpdates"`
			Options         struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	strictYAML(t, "grafana/provisioning/dashboards/dashboards.yaml", &dp)
	g := c.Services["grafana"]
	for _, p := range dp.Providers {
		if !slices.ContainsFunc(g.Volumes, func(v string) bool {
			return strings.HasPrefix(v, "./grafana/cascade-dashboard.json:"+p.Options.Path+"/")
		}) {
			t.Errorf("grafana provider %s reads %s, where the dashboard is not mounted (%v)", p.Name, p.Options.Path, g.Volumes)
		}
	}
}

func strictYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestCascadeConfigs runs the strict config loader (what `cascade
// check-config` runs) on every gateway config shipped under deploy/: any YAML
// file with a top-level tiers key.
func TestCascadeConfigs(t *testing.T) {
	n := 0
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || (!strings.HasSuffix(p, ".yaml") && !strings.HasSuffix(p, ".yml")) {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var top map[string]any
		if yaml.Unmarshal(data, &top) != nil {
			return nil // multi-document manifests; decoded elsewhere
		}
		if _, ok := top["tiers"]; !ok {
			return nil
		}
		n++
		if _, err := config.LoadFile(p); err != nil {
			t.Error(err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 4 {
		t.Errorf("found %d gateway configs under deploy/, want at least 4 (compose gpu and sim, k8s base and overlay)", n)
	}
}

// TestDockerfile checks the image recipe without a Docker daemon.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	var froms, lines []string
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, l)
		if strings.HasPrefix(l, "FROM ") {
			froms = append(froms, l)
		}
	}
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage build, got %d FROM lines", len(froms))
	}
	if !strings.Contains(froms[0], "golang:1.26") {
		t.Errorf("builder stage %q is not golang:1.26 (go.mod says go 1.26)", froms[0])
	}
	final := froms[len(froms)-1]
	if !strings.Contains(final, "distroless/static") && !strings.Contains(final, "scratch") {
		t.Errorf("final stage %q is not minimal", final)
	}
	finalIdx := slices.Index(lines, final)
	finalStage := lines[finalIdx:]
	has := func(lines []string, prefix, sub string) bool {
		return slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, prefix) && strings.Contains(l, sub) })
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w"`, "type=cache,target=/go/pkg/mod", "./cmd/cascade"} {
		if !has(lines[:finalIdx], "RUN", want) {
			t.Errorf("build stage does not use %s", want)
		}
	}
	user := ""
	for _, l := range finalStage {
		if u, ok := strings.CutPrefix(l, "USER "); ok {
			user = u
		}
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0") {
		t.Errorf("final image runs as %q, want a non-root user", user)
	}
	if !has(finalStage, "EXPOSE", "8080") {
		t.Error("no EXPOSE 8080")
	}
	if !has(finalStage, "HEALTHCHECK", `"/cascade", "healthcheck"`) {
		t.Error("HEALTHCHECK must exec /cascade healthcheck (no shell in the image)")
	}
	if !has(finalStage, "COPY --from=", "/cascade") || !has(finalStage, "ENTRYPOINT", `"/cascade"`) {
		t.Error("the final stage must hold the binary at /cascade and run it")
	}
	if n := len(slices.DeleteFunc(slices.Clone(finalStage), func(l string) bool { return !strings.HasPrefix(l, "COPY") })); n != 1 {
		t.Errorf("the final stage copies %d things; want only the binary", n)
	}
	// The subcommand the health check runs exists.
	src, err := os.ReadFile(filepath.Join("..", "cmd", "cascade", "healthcheck.go"))
	if err != nil || !bytes.Contains(src, []byte(`register("healthcheck"`)) {
		t.Errorf("cmd/cascade does not register a healthcheck command: %v", err)
	}
}
