package deploy_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// The Helm chart in charts/sluice is generated from the kustomize tree:
// charts/sluice/templates/<component>.yaml and values.yaml come from
// `kubectl kustomize <dir>` with the values a user sets turned into
// template expressions, and crds/ is the CRD of controller/. Only the
// helpers, the webhook's certificate without cert-manager and the
// ServiceMonitor are written by hand. TestChartIsGenerated fails when the
// committed chart differs from what the kustomize tree gives (`go test
// ./deploy -run TestChartIsGenerated -update-chart` rewrites it);
// TestHelmTemplate renders the chart with the real helm and compares every
// object with kustomize's.
var updateChart = flag.Bool("update-chart", false, "rewrite the generated files of charts/sluice")

const chartDir = "charts/sluice"

// monitoringFiles of deploy/monitoring are copied into the chart's files/.
var monitoringFiles = []string{"alerts.yaml", "dashboard.json"}

// components are the chart's switchable parts: values key, kustomize dir.
var components = []struct{ key, dir string }{
	{"csi", "base"}, {"controller", "controller"}, {"webhook", "webhook"}, {"devicePlugin", "deviceplugin"},
}

const sluiceImage = "ghcr.io/sluice-dev/sluice:latest"

func kubectlBin(t *testing.T) string {
	t.Helper()
	kubectl := os.Getenv("SLUICE_KUBECTL")
	if kubectl == "" {
		if m, _ := filepath.Glob("../bin/k8s-*/kubectl"); len(m) > 0 {
			kubectl = m[len(m)-1]
		}
	}
	if _, err := os.Stat(kubectl); kubectl == "" || err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("kubectl missing (make kube-binaries); CI must run this test")
		}
		t.Skip("needs kubectl (make kube-binaries)")
	}
	return kubectl
}

// kustomized renders dir and returns its objects.
func kustomized(t *testing.T, dir string) []map[string]any {
	t.Helper()
	out, err := exec.Command(kubectlBin(t), "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, out)
	}
	return splitDocs(t, out)
}

func splitDocs(t *testing.T, out []byte) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(out), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		if m != nil {
			objs = append(objs, m)
		}
	}
	return objs
}

// generator turns objects into template text: each string that names
// what a value sets becomes a placeholder token, replaced after YAML
// marshaling by a Go template expression.
type generator struct {
	tokens map[string]string // token → template expression
	values map[string]any
}

func (g *generator) token(expr string) string {
	tok := fmt.Sprintf("TPLX%04dX", len(g.tokens))
	g.tokens[tok] = expr
	return tok
}

// substitutions: literal → template expression, in strings.
var substitutions = []struct{ lit, expr string }{
	{"/var/lib/kubelet/device-plugins", `"/var/lib/kubelet/device-plugins"`}, // the kubelet's own, fixed
	{"/var/lib/kubelet", `$.Values.kubeletDir`},
	{"/var/cache/sluice", `$.Values.cacheDir`},
	{"sluice-system", `$.Release.Namespace`},
}

// str templatizes one string (key is its map key, "" in a list).
func (g *generator) str(key, s string) any {
	switch {
	case key == "image" && s == sluiceImage:
		return g.token(`{{ include "sluice.image" $ }}`)
	case regexp.MustCompile(`^-v=\d+$`).MatchString(s):
		return g.token(`-v={{ $.Values.logLevel }}`)
	}
	var parts []string
	rest, changed := s, false
	for rest != "" {
		i, which := -1, -1
		for k, sub := range substitutions {
			if j := strings.Index(rest, sub.lit); j >= 0 && (i < 0 || j < i || (j == i && len(sub.lit) > len(substitutions[which].lit))) {
				i, which = j, k
			}
		}
		if i < 0 {
			parts = append(parts, fmt.Sprintf("%q", rest))
			break
		}
		changed = true
		if i > 0 {
			parts = append(parts, fmt.Sprintf("%q", rest[:i]))
		}
		parts = append(parts, "("+substitutions[which].expr+")")
		rest = rest[i+len(substitutions[which].lit):]
	}
	if !changed {
		return s
	}
	return g.token(`{{ print ` + strings.Join(parts, " ") + ` | toJson }}`)
}

func (g *generator) walk(key string, v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = g.walk(k, e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = g.walk("", e)
		}
		return x
	case string:
		return g.str(key, x)
	}
	return v
}

// containers' resources become values.resources.<workload>.
func (g *generator) resources(obj map[string]any) {
	spec, _ := nestedMap(obj, "spec", "template", "spec")
	cs, _ := spec["containers"].([]any)
	for _, c := range cs {
		cm := c.(map[string]any)
		if cm["name"] != "sluice" || cm["resources"] == nil {
			continue
		}
		name := nestedString(obj, "metadata", "name")
		g.values["resources"].(map[string]any)[name] = cm["resources"]
		cm["resources"] = g.token(fmt.Sprintf(`{{ index $.Values.resources %q | toJson }}`, name))
	}
}

func nestedMap(m map[string]any, path ...string) (map[string]any, bool) {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		v = mm[p]
	}
	mm, ok := v.(map[string]any)
	return mm, ok
}

func nestedString(m map[string]any, path ...string) string {
	mm, _ := nestedMap(m, path[:len(path)-1]...)
	s, _ := mm[path[len(path)-1]].(string)
	return s
}

// generate returns the chart's generated files: path → content.
func generate(t *testing.T) map[string][]byte {
	t.Helper()
	g := &generator{tokens: map[string]string{}, values: map[string]any{
		"image":            map[string]any{"repository": "ghcr.io/sluice-dev/sluice", "tag": "latest"},
		"logLevel":         2,
		"kubeletDir":       "/var/lib/kubelet",
		"cacheDir":         "/var/cache/sluice",
		"resources":        map[string]any{},
		"serviceMonitor":   map[string]any{"enabled": false, "interval": "30s"},
		"prometheusRule":   map[string]any{"enabled": false},
		"grafanaDashboard": map[string]any{"enabled": false},
	}}
	files := map[string][]byte{}
	for _, f := range monitoringFiles {
		b, err := os.ReadFile(filepath.Join("monitoring", f))
		if err != nil {
			t.Fatal(err)
		}
		files["files/"+f] = b
	}
	for _, c := range components {
		g.values[c.key] = map[string]any{"enabled": true}
		var body bytes.Buffer
		fmt.Fprintf(&body, "# Generated from deploy/%s by deploy/chart_test.go: edit the kustomize tree, then\n"+
			"# go test ./deploy -run TestChartIsGenerated -update-chart\n{{- if .Values.%s.enabled }}\n", c.dir, c.key)
		for _, obj := range kustomized(t, c.dir) {
			kind := obj["kind"].(string)
			switch {
			case kind == "Namespace": // the release's namespace (helm install --create-namespace)
				continue
			case kind == "CustomResourceDefinition":
				b, err := os.ReadFile("controller/sluice.dev_datasets.yaml")
				if err != nil {
					t.Fatal(err)
				}
				files["crds/sluice.dev_datasets.yaml"] = b
				continue
			case kind == "MutatingWebhookConfiguration": // templates/webhook-tls.yaml, with its certificate
				continue
			case kind == "ConfigMap" && nestedString(obj, "metadata", "name") == "sluice-webhook-config":
				var cfg map[string]any
				data := obj["data"].(map[string]any)
				if err := yaml.Unmarshal([]byte(data["config.yaml"].(string)), &cfg); err != nil {
					t.Fatal(err)
				}
				delete(cfg, "controllerURL") // the release's namespace
				if sc, ok := cfg["sidecar"].(map[string]any); ok {
					delete(sc, "image") // the chart's image.*
				}
				g.values["webhook"].(map[string]any)["config"] = cfg
				g.values["webhook"].(map[string]any)["certManager"] = false
				g.values["webhook"].(map[string]any)["certDays"] = 3650
				data["config.yaml"] = g.token(`{{ include "sluice.webhookConfig" $ | toJson }}`)
			}
			g.resources(obj)
			out, err := yaml.Marshal(g.walk("", obj))
			if err != nil {
				t.Fatal(err)
			}
			doc := string(out)
			if kind == "Certificate" || kind == "Issuer" {
				doc = "{{- if $.Values.webhook.certManager }}\n" + doc + "{{- end }}\n"
			}
			body.WriteString("---\n" + doc)
		}
		body.WriteString("{{- end }}\n")
		files["templates/"+c.key+".yaml"] = body.Bytes()
	}
	for path, b := range files {
		if strings.HasPrefix(path, "templates/") {
			files[path] = []byte(g.replace(string(b)))
		}
	}
	vals, err := yaml.Marshal(g.values)
	if err != nil {
		t.Fatal(err)
	}
	files["values.yaml"] = append([]byte(valuesHeader), vals...)
	return files
}

func (g *generator) replace(s string) string {
	keys := make([]string, 0, len(g.tokens))
	for k := range g.tokens {
		keys = append(keys, k)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(keys)))
	for _, k := range keys {
		s = strings.ReplaceAll(s, k, g.tokens[k])
	}
	return s
}

const valuesHeader = `# Values of the sluice chart (generated with the templates from deploy/: see
# deploy/chart_test.go). The defaults render what the kustomize tree does.
#   image.repository, image.tag   the sluice image every component runs
#   logLevel                      klog -v of every component (at most 7)
#   kubeletDir                    the kubelet's root directory (k0s: /var/lib/k0s/kubelet;
#                                 microk8s: /var/snap/microk8s/common/var/lib/kubelet)
#   cacheDir                      the CSI node plugin's disk cache on each node (a hostPath)
#   csi, controller, webhook, devicePlugin .enabled   install that part
#   webhook.certManager           the webhook's certificate from cert-manager (else the chart
#                                 makes one and keeps it across upgrades, and makes a new one at
#                                 the first upgrade in the last third of webhook.certDays)
#   webhook.config                the webhook's configuration (webhook/config.go); its
#                                 controllerURL defaults to the controller in this release, and
#                                 sidecar.image to image.repository:image.tag
#   resources.<workload>          the sluice container's resources
#   serviceMonitor.enabled        a Prometheus Operator ServiceMonitor for the metrics
`

// TestChartIsGenerated: the committed chart is what the kustomize tree
// gives.
func TestChartIsGenerated(t *testing.T) {
	for path, want := range generate(t) {
		full := filepath.Join(chartDir, path)
		if *updateChart {
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(full, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(full)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not what deploy/ gives (%v): run go test ./deploy -run TestChartIsGenerated -update-chart", full, err)
		}
	}
}

// helmBin is the pinned helm of make tools.
func helmBin(t *testing.T) string {
	t.Helper()
	helm := os.Getenv("SLUICE_HELM")
	if helm == "" {
		helm = "../bin/helm"
	}
	if _, err := os.Stat(helm); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("helm missing (make tools); CI must run this test")
		}
		t.Skip("needs helm (make tools)")
	}
	return helm
}

// TestHelmTemplate lints the chart and renders it with the real helm: with
// cert-manager, every object equals kustomize's (the webhook's config
// compared as YAML); without it, the webhook gets a certificate Secret and
// its caBundle; parts switch off.
func TestHelmTemplate(t *testing.T) {
	helm := helmBin(t)
	if out, err := exec.Command(helm, "lint", "--strict", chartDir).CombinedOutput(); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	render := func(t *testing.T, set ...string) []map[string]any {
		args := []string{"template", "sluice", chartDir, "--namespace", "sluice-system", "--include-crds", "--kube-version", "1.37.2"}
		for _, s := range set {
			args = append(args, "--set", s)
		}
		out, err := exec.Command(helm, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("helm template %v: %v\n%s", set, err, out)
		}
		return splitDocs(t, out)
	}
	t.Run("same objects as kustomize", func(t *testing.T) {
		want := map[string]string{}
		for _, c := range components {
			for _, obj := range kustomized(t, c.dir) {
				if obj["kind"] != "Namespace" {
					want[objKey(obj)] = canonical(t, obj)
				}
			}
		}
		got := map[string]string{}
		for _, obj := range render(t, "webhook.certManager=true") {
			got[objKey(obj)] = canonical(t, obj)
		}
		for k, w := range want {
			if g, ok := got[k]; !ok {
				t.Errorf("the chart lacks %s", k)
			} else if g != w {
				t.Errorf("%s differs:\nchart:     %s\nkustomize: %s", k, g, w)
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("the chart has %s, which kustomize does not", k)
			}
		}
	})
	t.Run("webhook certificate without cert-manager", func(t *testing.T) {
		var secret, mwc map[string]any
		for _, obj := range render(t) {
			switch objKey(obj) {
			case "Secret/sluice-system/sluice-webhook-tls":
				secret = obj
			case "MutatingWebhookConfiguration//sluice-webhook":
				mwc = obj
			case "Certificate/sluice-system/sluice-webhook":
				t.Error("a cert-manager Certificate without certManager")
			}
		}
		if secret == nil || mwc == nil {
			t.Fatalf("want the webhook's TLS Secret and configuration; got %v, %v", secret != nil, mwc != nil)
		}
		// The chart renews the certificate at an upgrade in the last third of
		// its life; the Secret says when it ends.
		notAfter, err := strconv.ParseInt(nestedString(secret, "metadata", "annotations", "sluice.dev/not-after"), 10, 64)
		if days := (notAfter - time.Now().Unix()) / 86400; err != nil || days < 3649 || days > 3650 {
			t.Errorf("sluice.dev/not-after %d (%v): want 3650 days from now", notAfter, err)
		}
		ca := mwc["webhooks"].([]any)[0].(map[string]any)["clientConfig"].(map[string]any)["caBundle"]
		if ca == nil || ca != secret["data"].(map[string]any)["ca.crt"] {
			t.Errorf("caBundle %v is not the Secret's ca.crt", ca)
		}
	})
	t.Run("monitoring", func(t *testing.T) {
		var rule, dash, podMonitor map[string]any
		for _, obj := range render(t, "serviceMonitor.enabled=true", "prometheusRule.enabled=true", "grafanaDashboard.enabled=true") {
			switch objKey(obj) {
			case "PrometheusRule/sluice-system/sluice":
				rule = obj
			case "ConfigMap/sluice-system/sluice-dashboard":
				dash = obj
			case "PodMonitor/sluice-system/sluice-cache-workers":
				podMonitor = obj
			}
		}
		if rule == nil || dash == nil || podMonitor == nil {
			t.Fatalf("want the PrometheusRule, the dashboard and the workers' PodMonitor; got %v, %v, %v", rule != nil, dash != nil, podMonitor != nil)
		}
		b, _ := os.ReadFile("monitoring/alerts.yaml")
		var alerts map[string]any
		if err := yaml.Unmarshal(b, &alerts); err != nil {
			t.Fatal(err)
		}
		if got, want := canonical(t, rule["spec"].(map[string]any)), canonical(t, alerts); got != want {
			t.Errorf("the PrometheusRule's spec is not alerts.yaml:\n%s\n%s", got, want)
		}
		b, _ = os.ReadFile("monitoring/dashboard.json")
		if dash["data"].(map[string]any)["sluice.json"] != string(b) {
			t.Error("the dashboard ConfigMap does not hold dashboard.json")
		}
		for _, obj := range render(t) {
			if k := objKey(obj); strings.HasPrefix(k, "PrometheusRule/") || strings.HasPrefix(k, "PodMonitor/") || k == "ConfigMap/sluice-system/sluice-dashboard" {
				t.Errorf("%s rendered by default", k)
			}
		}
	})
	t.Run("parts switch off", func(t *testing.T) {
		for _, obj := range render(t, "webhook.enabled=false", "devicePlugin.enabled=false", "kubeletDir=/var/lib/k0s/kubelet",
			"cacheDir=/mnt/nvme/sluice", "logLevel=4") {
			name := nestedString(obj, "metadata", "name")
			if strings.Contains(name, "webhook") || strings.Contains(name, "device-plugin") {
				t.Errorf("%s rendered with its part off", objKey(obj))
			}
			b, _ := json.Marshal(obj)
			if bytes.Contains(b, []byte(`"/var/lib/kubelet/`)) && !bytes.Contains(b, []byte("/var/lib/kubelet/device-plugins")) {
				t.Errorf("%s still names /var/lib/kubelet", objKey(obj))
			}
			if bytes.Contains(b, []byte("/var/cache/sluice")) {
				t.Errorf("%s still names /var/cache/sluice", objKey(obj))
			}
			if bytes.Contains(b, []byte(`"-v=2"`)) {
				t.Errorf("%s kept -v=2 with logLevel=4", objKey(obj))
			}
		}
	})
}

func objKey(obj map[string]any) string {
	return fmt.Sprintf("%s/%s/%s", obj["kind"], nestedString(obj, "metadata", "namespace"), nestedString(obj, "metadata", "name"))
}

// canonical is obj as JSON with sorted keys; a webhook config string is
// compared as the YAML it holds.
func canonical(t *testing.T, obj map[string]any) string {
	t.Helper()
	if obj["kind"] == "ConfigMap" {
		if data, ok := obj["data"].(map[string]any); ok {
			if s, ok := data["config.yaml"].(string); ok {
				var v any
				if err := yaml.Unmarshal([]byte(s), &v); err != nil {
					t.Fatal(err)
				}
				data["config.yaml"] = v
			}
		}
	}
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
