package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/cascade-gateway/cascade/config"
)

// kinds maps apiVersion/kind to a constructor of the real API type. A manifest
// of any other kind fails the test: add its type here when adding one.
var kinds = map[string]func() any{
	"v1/ConfigMap":                                  func() any { return new(corev1.ConfigMap) },
	"v1/Namespace":                                  func() any { return new(corev1.Namespace) },
	"v1/Secret":                                     func() any { return new(corev1.Secret) },
	"v1/Service":                                    func() any { return new(corev1.Service) },
	"v1/ServiceAccount":                             func() any { return new(corev1.ServiceAccount) },
	"v1/PersistentVolumeClaim":                      func() any { return new(corev1.PersistentVolumeClaim) },
	"apps/v1/Deployment":                            func() any { return new(appsv1.Deployment) },
	"apps/v1/StatefulSet":                           func() any { return new(appsv1.StatefulSet) },
	"autoscaling/v2/HorizontalPodAutoscaler":        func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"policy/v1/PodDisruptionBudget":                 func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/NetworkPolicy":            func() any { return new(networkingv1.NetworkPolicy) },
	"networking.k8s.io/v1/Ingress":                  func() any { return new(networkingv1.Ingress) },
	"kustomize.config.k8s.io/v1beta1/Kustomization": func() any { return new(kustomization) },
}

// kustomization is the part of kustomize's Kustomization that these files use;
// decoding is strict, so a field outside it (or a typo) fails.
type kustomization struct {
	metav1.TypeMeta `json:",inline"`
	Namespace       string `json:"namespace,omitempty"`
	Labels          []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
	} `json:"labels,omitempty"`
	Resources []string `json:"resources,omitempty"`
	Images    []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
	Replicas []struct {
		Name  string `json:"name"`
		Count int    `json:"count"`
	} `json:"replicas,omitempty"`
	ConfigMapGenerator []generator `json:"configMapGenerator,omitempty"`
	Patches            []struct {
		Path string `json:"path"`
	} `json:"patches,omitempty"`
}

type generator struct {
	Name     string   `json:"name"`
	Behavior string   `json:"behavior,omitempty"`
	Files    []string `json:"files"`
}

// object is one decoded manifest document.
type object struct {
	file string
	kind string // apiVersion/kind
	obj  any
}

func (o object) name() string {
	if m, ok := o.obj.(metav1.Object); ok {
		return m.GetName()
	}
	return ""
}

// splitDocs splits a YAML stream at document separators.
func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if len(bytes.TrimSpace(stripComments(cur.Bytes()))) > 0 {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if t := bytes.TrimRight(line, " \t\r\n"); bytes.Equal(t, []byte("---")) {
			flush()
			continue
		}
		cur.Write(line)
	}
	flush()
	return docs
}

func stripComments(b []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] == '#' {
			continue
		}
		out.Write(line)
	}
	return out.Bytes()
}

// decodeStrict decodes one YAML document into the API type its
// apiVersion/kind names, rejecting unknown fields and unknown kinds.
func decodeStrict(doc []byte) (string, any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return "", nil, err
	}
	kind := tm.APIVersion + "/" + tm.Kind
	mk, ok := kinds[kind]
	if !ok {
		return kind, nil, fmt.Errorf("unknown kind %q (apiVersion %q)", tm.Kind, tm.APIVersion)
	}
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return kind, nil, err
	}
	obj := mk()
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return kind, nil, fmt.Errorf("%s: %w", kind, err)
	}
	return kind, obj, nil
}

func decodeFile(t *testing.T, path string) []object {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []object
	for i, doc := range splitDocs(data) {
		kind, obj, err := decodeStrict(doc)
		if err != nil {
			t.Errorf("%s (document %d): %v", path, i+1, err)
			continue
		}
		if m, ok := obj.(metav1.Object); ok && m.GetName() == "" {
			t.Errorf("%s (document %d): %s has no metadata.name", path, i+1, kind)
		}
		out = append(out, object{file: path, kind: kind, obj: obj})
	}
	return out
}

// kustomizeDir is one kustomization with the objects of its own resource
// files (not those of referenced bases) and its patches.
type kustomizeDir struct {
	dir       string
	k         kustomization
	resources []object
	patches   []object
	bases     []string // referenced kustomization directories
	configs   map[string]*config.Config
}

// loadKustomization decodes dir/kustomization.yaml and everything it names,
// recording every file it references in seen.
func loadKustomization(t *testing.T, dir string, seen map[string]bool) *kustomizeDir {
	t.Helper()
	kf := filepath.Join(dir, "kustomization.yaml")
	seen[kf] = true
	objs := decodeFile(t, kf)
	if len(objs) != 1 {
		t.Fatalf("%s: want one Kustomization document, got %d", kf, len(objs))
	}
	kd := &kustomizeDir{dir: dir, k: *objs[0].obj.(*kustomization), configs: map[string]*config.Config{}}
	for _, r := range kd.k.Resources {
		p := filepath.Join(dir, r)
		st, err := os.Stat(p)
		switch {
		case err != nil:
			t.Errorf("%s: resource %q: %v", kf, r, err)
		case st.IsDir():
			if _, err := os.Stat(filepath.Join(p, "kustomization.yaml")); err != nil {
				t.Errorf("%s: resource directory %q has no kustomization.yaml", kf, r)
				continue
			}
			kd.bases = append(kd.bases, p)
		default:
			seen[p] = true
			kd.resources = append(kd.resources, decodeFile(t, p)...)
		}
	}
	for _, pt := range kd.k.Patches {
		p := filepath.Join(dir, pt.Path)
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: patch %q: %v", kf, pt.Path, err)
			continue
		}
		seen[p] = true
		kd.patches = append(kd.patches, decodeFile(t, p)...)
	}
	for _, g := range kd.k.ConfigMapGenerator {
		for _, f := range g.Files {
			p := filepath.Join(dir, f)
			seen[p] = true
			if strings.Contains(f, "=") {
				t.Errorf("%s: generator %s: use plain file names, the key is the file name", kf, g.Name)
			}
			// The only generated ConfigMap data are gateway configs.
			c, err := config.LoadFile(p)
			if err != nil {
				t.Errorf("%s: generator %s: %v", kf, g.Name, err)
				continue
			}
			kd.configs[g.Name+"/"+filepath.Base(f)] = c
		}
	}
	return kd
}

// TestKubernetesManifests decodes every manifest under k8s/ strictly and
// checks that nothing there is left unreferenced by a kustomization.
func TestKubernetesManifests(t *testing.T) {
	seen := map[string]bool{}
	var dirs []string
	err := filepath.WalkDir("k8s", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "kustomization.yaml" {
			dirs = append(dirs, filepath.Dir(p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(dirs, filepath.Join("k8s", "base")) || !slices.Contains(dirs, filepath.Join("k8s", "overlays", "example")) {
		t.Fatalf("kustomizations found: %v; want k8s/base and k8s/overlays/example", dirs)
	}
	for _, d := range dirs {
		loadKustomization(t, d, seen)
	}
	_ = filepath.WalkDir("k8s", func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) && !seen[p] {
			t.Errorf("%s is not referenced by any kustomization.yaml", p)
		}
		return nil
	})
}

func TestDecodeStrictRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":  "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {selectr: {a: b}}\n",
		"unknown kind":   "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\n",
		"wrong type":     "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n",
		"bad quantity":   "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: x}\nspec: {resources: {requests: {storage: 20GB-ish}}}\n",
		"misplaced key":  "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: x}\nminAvailable: 1\n",
		"wrong version":  "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: x}\n",
		"kustomize typo": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresource: [a.yaml]\n",
	} {
		if _, _, err := decodeStrict([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	if _, _, err := decodeStrict([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {selector: {a: b}}\n")); err != nil {
		t.Errorf("valid Service: %v", err)
	}
}

// base loads k8s/base and indexes its objects.
type baseIndex struct {
	kd           *kustomizeDir
	deployments  map[string]*appsv1.Deployment
	statefulsets map[string]*appsv1.StatefulSet
	services     map[string]*corev1.Service
	hpas         map[string]*autoscalingv2.HorizontalPodAutoscaler
	pdbs         map[string]*policyv1.PodDisruptionBudget
	all          []object
}

func loadBase(t *testing.T) *baseIndex {
	t.Helper()
	kd := loadKustomization(t, filepath.Join("k8s", "base"), map[string]bool{})
	b := &baseIndex{kd: kd, deployments: map[string]*appsv1.Deployment{}, statefulsets: map[string]*appsv1.StatefulSet{},
		services: map[string]*corev1.Service{}, hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, all: kd.resources}
	for _, o := range kd.resources {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			b.deployments[v.Name] = v
		case *appsv1.StatefulSet:
			b.statefulsets[v.Name] = v
		case *corev1.Service:
			b.services[v.Name] = v
		case *autoscalingv2.HorizontalPodAutoscaler:
			b.hpas[v.Name] = v
		case *policyv1.PodDisruptionBudget:
			b.pdbs[v.Name] = v
		case *corev1.Secret:
			if len(v.Data) > 0 || len(v.StringData) > 0 {
				t.Errorf("%s: Secret %s carries values; reference Secrets by name and create them out of band", o.file, v.Name)
			}
		}
	}
	return b
}

// workload is a pod template with its owner's name.
type workload struct {
	kind, name string
	selector   *metav1.LabelSelector
	tmpl       *corev1.PodTemplateSpec
	claims     []string // volume claim templates (StatefulSet)
}

func (b *baseIndex) workloads() []workload {
	var ws []workload
	for n, d := range b.deployments {
		ws = append(ws, workload{"Deployment", n, d.Spec.Selector, &d.Spec.Template, nil})
	}
	for n, s := range b.statefulsets {
		var claims []string
		for _, c := range s.Spec.VolumeClaimTemplates {
			claims = append(claims, c.Name)
		}
		ws = append(ws, workload{"StatefulSet", n, s.Spec.Selector, &s.Spec.Template, claims})
	}
	slices.SortFunc(ws, func(a, b workload) int { return strings.Compare(a.name, b.name) })
	return ws
}

// serviceBackends returns the workloads whose pods a Service selects.
func (b *baseIndex) serviceBackends(svc *corev1.Service) []workload {
	var out []workload
	if len(svc.Spec.Selector) == 0 {
		return nil
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	for _, w := range b.workloads() {
		if sel.Matches(labels.Set(w.tmpl.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

func containerPort(c *corev1.Container, name string) (int32, bool) {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

func TestWorkloadsAndServices(t *testing.T) {
	b := loadBase(t)
	for _, w := range b.workloads() {
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || sel.Empty() {
			t.Errorf("%s %s: bad or empty selector: %v", w.kind, w.name, err)
			continue
		}
		if !sel.Matches(labels.Set(w.tmpl.Labels)) {
			t.Errorf("%s %s: selector %s does not match its pod labels %v", w.kind, w.name, sel, w.tmpl.Labels)
		}
		for _, c := range w.tmpl.Spec.Containers {
			if c.Image == "" || !strings.Contains(c.Image, ":") {
				t.Errorf("%s %s: container %s image %q has no tag", w.kind, w.name, c.Name, c.Image)
			}
			if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s %s: container %s needs memory requests and limits", w.kind, w.name, c.Name)
			}
			if c.ReadinessProbe == nil {
				t.Errorf("%s %s: container %s has no readiness probe", w.kind, w.name, c.Name)
			}
			for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
				if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.StrVal != "" {
					if _, ok := containerPort(&c, p.HTTPGet.Port.StrVal); !ok {
						t.Errorf("%s %s: probe port %q is not a named container port", w.kind, w.name, p.HTTPGet.Port.StrVal)
					}
				}
			}
			for _, m := range c.VolumeMounts {
				if !slices.ContainsFunc(w.tmpl.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) && !slices.Contains(w.claims, m.Name) {
					t.Errorf("%s %s: mount %s has no volume", w.kind, w.name, m.Name)
				}
			}
		}
	}
	for name, svc := range b.services {
		ws := b.serviceBackends(svc)
		if len(ws) != 1 {
			t.Errorf("Service %s selects %d workloads, want exactly 1 (selector %v)", name, len(ws), svc.Spec.Selector)
			continue
		}
		c := &ws[0].tmpl.Spec.Containers[0]
		for _, p := range svc.Spec.Ports {
			if p.TargetPort.StrVal != "" {
				if _, ok := containerPort(c, p.TargetPort.StrVal); !ok {
					t.Errorf("Service %s: targetPort %q is not a port of %s", name, p.TargetPort.StrVal, ws[0].name)
				}
			}
		}
	}
	for name, s := range b.statefulsets {
		if _, ok := b.services[s.Spec.ServiceName]; !ok {
			t.Errorf("StatefulSet %s: serviceName %q is not a Service", name, s.Spec.ServiceName)
		}
	}
}

// gatewayConfig returns the config the gateway Deployment mounts, checking
// the path from --config through the volume to the generator.
func gatewayConfig(t *testing.T, kd *kustomizeDir, c *corev1.Container, pod *corev1.PodSpec) *config.Config {
	t.Helper()
	cfgPath := flagValue(c.Args, "config")
	if cfgPath == "" {
		t.Fatalf("gateway args %v have no --config", c.Args)
	}
	for _, m := range c.VolumeMounts {
		if !strings.HasPrefix(cfgPath, m.MountPath+"/") {
			continue
		}
		key := strings.TrimPrefix(cfgPath, m.MountPath+"/")
		for _, v := range pod.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			if len(v.ConfigMap.Items) > 0 && !slices.ContainsFunc(v.ConfigMap.Items, func(k corev1.KeyToPath) bool { return k.Path == key }) {
				t.Fatalf("volume %s does not project %s", v.Name, key)
			}
			for _, it := range v.ConfigMap.Items {
				if it.Path == key {
					key = it.Key
				}
			}
			cfg, ok := kd.configs[v.ConfigMap.Name+"/"+key]
			if !ok {
				t.Fatalf("--config=%s: ConfigMap %s has no generated key %s (generated: %v)", cfgPath, v.ConfigMap.Name, key, keys(kd.configs))
			}
			return cfg
		}
	}
	t.Fatalf("--config=%s is not inside a ConfigMap mount", cfgPath)
	return nil
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// flagValue finds --name=value or --name value in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		for _, p := range []string{"--" + name, "-" + name} {
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				return v
			}
			if a == p && i+1 < len(args) {
				return args[i+1]
			}
		}
	}
	return ""
}

func TestGateway(t *testing.T) {
	b := loadBase(t)
	d, ok := b.deployments["cascade-gateway"]
	if !ok {
		t.Fatal("no Deployment cascade-gateway in k8s/base")
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("gateway replicas = %v, want at least 2", d.Spec.Replicas)
	}
	pod := &d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("gateway pod has %d containers, want 1", len(pod.Containers))
	}
	c := &pod.Containers[0]
	cfg := gatewayConfig(t, b.kd, c, pod)

	// Probes.
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("liveness probe must GET /healthz: %+v", c.LivenessProbe)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe must GET /readyz: %+v", c.ReadinessProbe)
	}
	_, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		t.Fatalf("config listen %q: %v", cfg.Listen, err)
	}
	if p, ok := containerPort(c, "http"); !ok || strconv.Itoa(int(p)) != port {
		t.Errorf("container port http = %d, config listens on %s", p, cfg.Listen)
	}
	if strings.HasPrefix(cfg.Listen, "127.") || strings.HasPrefix(cfg.Listen, "localhost") {
		t.Errorf("config listen %q is loopback-only; probes and the Service cannot reach it", cfg.Listen)
	}

	// Resources and security.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("gateway has no %s request (the HPA needs the CPU one)", r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("gateway has no %s limit", r)
		}
	}
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("gateway pod must run as a non-root user: %+v", psc)
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("gateway container must have a read-only root, no privilege escalation, all capabilities dropped: %+v", sc)
	}

	// Graceful termination outlasts the longest stream.
	graceArg := flagValue(c.Args, "shutdown-grace")
	grace, err := time.ParseDuration(graceArg)
	if err != nil {
		t.Fatalf("--shutdown-grace %q: %v", graceArg, err)
	}
	if grace < cfg.Timeouts.Total {
		t.Errorf("--shutdown-grace %v is shorter than timeouts.total %v: the longest stream would be cut", grace, cfg.Timeouts.Total)
	}
	var preStop time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	} else {
		t.Error("gateway has no preStop sleep: new requests can arrive after SIGTERM while the endpoint is still listed")
	}
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds")
	}
	if tg := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second; tg <= preStop+grace {
		t.Errorf("terminationGracePeriodSeconds %v must exceed preStop %v + --shutdown-grace %v", tg, preStop, grace)
	}

	// Every environment variable the config names is set, secrets from Secrets.
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	need := []string{cfg.Admin.TokenEnv}
	for _, tier := range cfg.Tiers {
		for _, e := range tier.Endpoints {
			need = append(need, e.APIKeyEnv)
		}
	}
	for _, n := range need {
		if n == "" {
			continue
		}
		e, ok := env[n]
		if !ok {
			t.Errorf("config reads $%s but the gateway container does not set it", n)
			continue
		}
		if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name == "" {
			t.Errorf("$%s must come from a Secret by reference, not a literal", n)
		}
	}

	// The gateway Service, HPA and PDB point at these pods.
	svc, ok := b.services["cascade-gateway"]
	if !ok {
		t.Fatal("no Service cascade-gateway")
	}
	if ws := b.serviceBackends(svc); len(ws) != 1 || ws[0].name != d.Name {
		t.Errorf("Service cascade-gateway selects %v", ws)
	}
	hpa, ok := b.hpas["cascade-gateway"]
	if !ok {
		t.Fatal("no HorizontalPodAutoscaler cascade-gateway")
	}
	if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != d.Name || hpa.Spec.ScaleTargetRef.APIVersion != "apps/v1" {
		t.Errorf("HPA targets %+v", hpa.Spec.ScaleTargetRef)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
		t.Errorf("HPA replicas %v..%d", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
	}
	cpu := false
	for _, m := range hpa.Spec.Metrics {
		if m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU {
			cpu = true
		}
	}
	if !cpu {
		t.Error("HPA does not scale on CPU")
	}
	pdb, ok := b.pdbs["cascade-gateway"]
	if !ok {
		t.Fatal("no PodDisruptionBudget cascade-gateway")
	}
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("PDB selector %v does not select the gateway pods (%v)", pdb.Spec.Selector, err)
	}
	if pdb.Spec.MinAvailable == nil && pdb.Spec.MaxUnavailable == nil {
		t.Error("PDB sets neither minAvailable nor maxUnavailable")
	}
	if pdb.Spec.MinAvailable != nil && pdb.Spec.MinAvailable.IntValue() >= int(*hpa.Spec.MinReplicas) {
		t.Errorf("PDB minAvailable %v blocks every voluntary eviction at %d replicas", pdb.Spec.MinAvailable, *hpa.Spec.MinReplicas)
	}
}

// TestBackends follows every endpoint of the gateway config to a Service and
// the model server behind it.
func TestBackends(t *testing.T) {
	b := loadBase(t)
	d := b.deployments["cascade-gateway"]
	if d == nil {
		t.Fatal("no Deployment cascade-gateway")
	}
	cfg := gatewayConfig(t, b.kd, &d.Spec.Template.Spec.Containers[0], &d.Spec.Template.Spec)
	lookup := func(rawURL string) (*corev1.Service, workload, bool) {
		t.Helper()
		u, err := url.Parse(rawURL)
		if err != nil {
			t.Errorf("%s: %v", rawURL, err)
			return nil, workload{}, false
		}
		host := strings.TrimSuffix(u.Hostname(), ".svc")
		svc, ok := b.services[host]
		if !ok {
			t.Errorf("%s: host %q is not a Service in k8s/base (have %v)", rawURL, u.Hostname(), keys(b.services))
			return nil, workload{}, false
		}
		port := u.Port()
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return strconv.Itoa(int(p.Port)) == port }) {
			t.Errorf("%s: Service %s has no port %s", rawURL, host, port)
		}
		ws := b.serviceBackends(svc)
		if len(ws) != 1 {
			t.Errorf("%s: Service %s selects %d workloads", rawURL, host, len(ws))
			return svc, workload{}, false
		}
		return svc, ws[0], true
	}
	if cfg.Redis.URL == "" {
		t.Error("the gateway config has no redis.url")
	} else {
		lookup(cfg.Redis.URL)
	}
	if len(cfg.Tiers) < 2 {
		t.Fatalf("want a small and a large tier, got %d", len(cfg.Tiers))
	}
	for _, tier := range cfg.Tiers {
		for _, e := range tier.Endpoints {
			_, w, ok := lookup(e.URL)
			if !ok {
				continue
			}
			checkModelServer(t, tier, e, w)
		}
	}
}

func checkModelServer(t *testing.T, tier config.Tier, e config.Endpoint, w workload) {
	t.Helper()
	name := w.kind + " " + w.name
	pod := &w.tmpl.Spec
	c := &pod.Containers[0]
	if got := flagValue(c.Args, "served-model-name"); got != e.Model {
		t.Errorf("%s serves %q, tier %s expects model %q", name, got, tier.Name, e.Model)
	}
	gpus := c.Resources.Limits[corev1.ResourceName("nvidia.com/gpu")]
	if gpus.IsZero() {
		t.Errorf("%s has no nvidia.com/gpu limit", name)
	}
	if req, ok := c.Resources.Requests[corev1.ResourceName("nvidia.com/gpu")]; ok && req.Cmp(gpus) != 0 {
		t.Errorf("%s: GPU request %s differs from limit %s", name, req.String(), gpus.String())
	}
	if tp := flagValue(c.Args, "tensor-parallel-size"); tp != "" && tp != gpus.String() {
		t.Errorf("%s: --tensor-parallel-size %s but %s GPUs", name, tp, gpus.String())
	}
	if tier.Cost.GPU != nil && resource.NewQuantity(int64(tier.Cost.GPU.GPUs), resource.DecimalSI).Cmp(gpus) != 0 {
		t.Errorf("%s: tier %s is priced for %d GPUs per replica, the pod gets %s", name, tier.Name, tier.Cost.GPU.GPUs, gpus.String())
	}
	if len(pod.NodeSelector) == 0 {
		t.Errorf("%s has no nodeSelector for the GPU pool", name)
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool { return tl.Key == "nvidia.com/gpu" }) {
		t.Errorf("%s does not tolerate the nvidia.com/gpu taint", name)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/health" {
		t.Errorf("%s: readiness must GET /health", name)
	}
	shm := false
	for _, m := range c.VolumeMounts {
		if m.MountPath != "/dev/shm" {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory {
				shm = true
			}
		}
	}
	if !shm {
		t.Errorf("%s: /dev/shm must be a memory-backed emptyDir (tensor parallel needs shared memory)", name)
	}
	if p, ok := containerPort(c, "http"); !ok || flagValue(c.Args, "port") != strconv.Itoa(int(p)) {
		t.Errorf("%s: --port %q and container port %d disagree", name, flagValue(c.Args, "port"), p)
	}
}

// TestOverlay checks that the example overlay refers to what the base has.
func TestOverlay(t *testing.T) {
	b := loadBase(t)
	kd := loadKustomization(t, filepath.Join("k8s", "overlays", "example"), map[string]bool{})
	if kd.k.Namespace == "" {
		t.Error("the example overlay sets no namespace")
	}
	if !slices.Contains(kd.bases, filepath.Join("k8s", "base")) {
		t.Errorf("the example overlay does not build on k8s/base: %v", kd.bases)
	}
	images := map[string]bool{}
	for _, w := range b.workloads() {
		for _, c := range w.tmpl.Spec.Containers {
			images[strings.SplitN(c.Image, ":", 2)[0]] = true
		}
	}
	for _, im := range kd.k.Images {
		if !images[im.Name] {
			t.Errorf("overlay retags image %q, which no base workload uses", im.Name)
		}
	}
	for _, r := range kd.k.Replicas {
		if b.deployments[r.Name] == nil && b.statefulsets[r.Name] == nil {
			t.Errorf("overlay sets replicas of %q, which is not a base workload", r.Name)
		}
	}
	for _, g := range kd.k.ConfigMapGenerator {
		if g.Behavior != "replace" && g.Behavior != "merge" {
			continue
		}
		if !slices.ContainsFunc(b.kd.k.ConfigMapGenerator, func(bg generator) bool { return bg.Name == g.Name }) {
			t.Errorf("overlay %ss ConfigMap %q, which the base does not generate", g.Behavior, g.Name)
		}
	}
	for _, p := range kd.patches {
		found := slices.ContainsFunc(b.all, func(o object) bool { return o.kind == p.kind && o.name() == p.name() })
		if !found {
			t.Errorf("%s patches %s %s, which is not in the base", p.file, p.kind, p.name())
		}
	}
	// The overlay's config still fits the base gateway's shutdown grace.
	d := b.deployments["cascade-gateway"]
	grace, _ := time.ParseDuration(flagValue(d.Spec.Template.Spec.Containers[0].Args, "shutdown-grace"))
	for k, c := range kd.configs {
		if c.Timeouts.Total > grace {
			t.Errorf("overlay config %s: timeouts.total %v exceeds the gateway's --shutdown-grace %v", k, c.Timeouts.Total, grace)
		}
	}
}
