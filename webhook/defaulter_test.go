package webhook

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/yaml"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const ns = "team"

// cluster is what the webhook's cache sees in the tests: controller-runtime's
// fake client (no kube-apiserver is available to unit tests).
func cluster() []client.Object {
	sc := "sluice"
	return []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "opted", Labels: map[string]string{contract.InjectLabel: contract.InjectEnabled}}},
		node("vk-new", "v1.30.2-vk", true),
		node("vk-old", "v1.27.3", true),
		node("worker-1", "v1.31.0", false),
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: sc}, Provisioner: contract.DriverName},
		pvc("models", "pv-models", nil),
		pvc("unbound", "", &sc),
		pvc("other", "pv-other", nil),
		pvc("foreign", "pv-foreign", nil),
		pv("pv-models", contract.DriverName, map[string]string{contract.AttrSource: "s3://models/llama?endpoint=http://s3:9000",
			contract.AttrSubPath: "7b", "csi.storage.k8s.io/pvc/name": "models"}, &corev1.SecretReference{Name: "s3-creds", Namespace: ns}),
		pv("pv-other", "nfs.csi.k8s.io", map[string]string{"server": "nfs"}, nil),
		pv("pv-foreign", contract.DriverName, map[string]string{contract.AttrSource: "s3://b"}, &corev1.SecretReference{Name: "k", Namespace: "kube-system"}),
		dataset(ns, "imagenet"),
		sizedDataset(ns, "sized", 10<<30),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "locked", Labels: map[string]string{podSecurityEnforceLabel: "restricted"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "copying", Labels: map[string]string{contract.ModeLabel: contract.ModeCopy}}},
		dataset("locked", "imagenet"),
		dataset("copying", "imagenet"),
		dataset("opted", "imagenet"),
		dataset("shared", "coco", ns),
		dataset("shared", "private"),
	}
}

func annotate(k, v string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[k] = v
	}
}

func dataset(namespace, name string, access ...string) *v1alpha1.Dataset {
	return &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: v1alpha1.DatasetSpec{Source: "s3://" + name, Access: v1alpha1.AccessSpec{Namespaces: access}}}
}

func sizedDataset(namespace, name string, size int64) *v1alpha1.Dataset {
	ds := dataset(namespace, name)
	ds.Status.Preload = &v1alpha1.PreloadStatus{TotalBytes: size, Bytes: size}
	return ds
}

func node(name, kubelet string, serverless bool) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	n.Status.NodeInfo.KubeletVersion = kubelet
	if serverless {
		n.Labels = map[string]string{contract.ServerlessNodeLabelKey: contract.ServerlessNodeLabelValue}
	}
	return n
}

func pvc(name, volume string, sc *string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: volume, StorageClassName: sc}}
}

func pv(name, driver string, attrs map[string]string, secret *corev1.SecretReference) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeSpec{
		PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
			Driver: driver, VolumeHandle: name, VolumeAttributes: attrs, NodeStageSecretRef: secret}}}}
}

// pod is an app pod with one container mounting every volume at /data/<name>.
func pod(vols []corev1.Volume, mods ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}, Volumes: vols}}
	for _, v := range vols {
		p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts,
			corev1.VolumeMount{Name: v.Name, MountPath: "/data/" + v.Name, ReadOnly: true})
	}
	for _, m := range mods {
		m(p)
	}
	return p
}

func inline(name string, attrs map[string]string, secret string) corev1.Volume {
	v := corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
		Driver: contract.DriverName, ReadOnly: ptr.To(true), VolumeAttributes: attrs}}}
	if secret != "" {
		v.CSI.NodePublishSecretRef = &corev1.LocalObjectReference{Name: secret}
	}
	return v
}

func claim(name, claimName string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{
		ClaimName: claimName, ReadOnly: true}}}
}

var (
	srcVol     = inline("weights", map[string]string{contract.AttrSource: "s3://models/llama"}, "s3-creds")
	datasetVol = inline("imagenet", map[string]string{contract.AttrDataset: "imagenet"}, "")
)

func label(v string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Labels = map[string]string{contract.InjectLabel: v} }
}
func inNamespace(n string) func(*corev1.Pod) { return func(p *corev1.Pod) { p.Namespace = n } }
func onNode(n string) func(*corev1.Pod)      { return func(p *corev1.Pod) { p.Spec.NodeName = n } }
func selector(p *corev1.Pod) {
	p.Spec.NodeSelector = map[string]string{contract.ServerlessNodeLabelKey: contract.ServerlessNodeLabelValue, "zone": "a"}
}
func toleration(p *corev1.Pod) {
	p.Spec.Tolerations = []corev1.Toleration{{Key: contract.ServerlessTaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
}
func affinity(values ...string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
				Key: contract.ServerlessNodeLabelKey, Operator: corev1.NodeSelectorOpIn, Values: values}}}}}}}
	}
}
func initMounting(name string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "prepare", Image: "busybox",
			VolumeMounts: []corev1.VolumeMount{{Name: name, MountPath: "/in"}}})
	}
}
func existingSidecars(p *corev1.Pod) {
	p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "istio-proxy", Image: "proxy",
		RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)})
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "log-shipper", Image: "fluent-bit"})
}
func runAsNonRoot(p *corev1.Pod) {
	p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](1000), FSGroup: ptr.To[int64](2000)}
}

func platform(c *Config) {
	c.Profile = "eci"
	c.PlatformProfiles = map[string]PlatformProfile{"eci": {Annotations: map[string]string{"k8s.aliyun.com/eci-fuse": "true"}}}
}

func TestDefaulter(t *testing.T) {
	tests := []struct {
		name    string
		pod     *corev1.Pod
		config  func(*Config)
		changed bool
		deny    string // substring of the denial
	}{
		{name: "pod-label-inline-source", pod: pod([]corev1.Volume{srcVol}, label("true")), changed: true},
		{name: "namespace-label-dataset", pod: pod([]corev1.Volume{datasetVol}, inNamespace("opted")), changed: true},
		{name: "node-name-pvc-native", pod: pod([]corev1.Volume{claim("models", "models")}, onNode("vk-new")), changed: true},
		{name: "node-name-old-kubelet-poststart", pod: pod([]corev1.Volume{claim("models", "models")}, onNode("vk-old")), changed: true},
		{name: "node-selector-dataset", pod: pod([]corev1.Volume{datasetVol}, selector), changed: true},
		{name: "node-affinity", pod: pod([]corev1.Volume{srcVol}, affinity(contract.ServerlessNodeLabelValue)), changed: true},
		{name: "toleration", pod: pod([]corev1.Volume{srcVol}, toleration), changed: true},
		{name: "init-container-native", pod: pod([]corev1.Volume{srcVol}, label("true"), initMounting("weights")), changed: true},
		{name: "multiple-datasets", pod: pod([]corev1.Volume{datasetVol, inline("coco", map[string]string{contract.AttrDataset: "shared/coco"}, ""),
			srcVol, claim("models", "models"), {Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			label("true")), changed: true},
		{name: "existing-sidecars", pod: pod([]corev1.Volume{srcVol}, label("true"), existingSidecars), changed: true},
		{name: "profile-platform", pod: pod([]corev1.Volume{srcVol}, label("true"), runAsNonRoot), config: platform, changed: true},
		{name: "native-always-on-old-node", pod: pod([]corev1.Volume{srcVol}, onNode("vk-old")),
			config: func(c *Config) { c.NativeSidecar = NativeAlways }, changed: true},
		{name: "native-never-disk-cache", pod: pod([]corev1.Volume{srcVol}, label("true")),
			config: func(c *Config) { c.NativeSidecar = NativeNever; c.Sidecar.CacheDisk = "20Gi" }, changed: true},

		{name: "opt-out", pod: pod([]corev1.Volume{srcVol}, label("false"), selector)},
		{name: "regular-node-untouched", pod: pod([]corev1.Volume{srcVol}, onNode("worker-1"))},
		{name: "affinity-not-only-serverless", pod: pod([]corev1.Volume{srcVol}, affinity(contract.ServerlessNodeLabelValue, "other"))},
		{name: "no-sluice-volume", pod: pod([]corev1.Volume{{Name: "cfg", VolumeSource: corev1.VolumeSource{
			ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}}}, label("true"))},
		{name: "other-driver-pvc", pod: pod([]corev1.Volume{claim("other", "other")}, label("true"))},
		{name: "missing-pvc", pod: pod([]corev1.Volume{claim("gone", "does-not-exist")}, label("true"))},
		{name: "wildcard-toleration-untouched", pod: pod([]corev1.Volume{srcVol}, func(p *corev1.Pod) {
			p.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
		})},

		{name: "unbound-pvc", pod: pod([]corev1.Volume{claim("data", "unbound")}, label("true")), deny: "is not bound yet"},
		{name: "foreign-secret", pod: pod([]corev1.Volume{claim("f", "foreign")}, label("true")), deny: "copy the Secret into \"team\""},
		{name: "source-and-dataset", pod: pod([]corev1.Volume{inline("x", map[string]string{contract.AttrSource: "s3://b", contract.AttrDataset: "d"}, "")},
			label("true")), deny: "not both"},
		{name: "unknown-attribute", pod: pod([]corev1.Volume{inline("x", map[string]string{contract.AttrSource: "s3://b", "cachesize": "1Gi"}, "")},
			label("true")), deny: `unknown volume attribute(s) ["cachesize"]`},
		{name: "annotation-forces-poststart", pod: pod([]corev1.Volume{srcVol}, label("true"),
			annotate(contract.NativeSidecarAnnotation, "false")), changed: true},
		{name: "bad-native-annotation", pod: pod([]corev1.Volume{srcVol}, label("true"), annotate(contract.NativeSidecarAnnotation, "maybe")),
			deny: "sluice.dev/native-sidecar=\"maybe\""},
		{name: "missing-dataset", pod: pod([]corev1.Volume{inline("x", map[string]string{contract.AttrDataset: "nope"}, "")}, label("true")),
			deny: "Dataset " + ns + "/nope not found"},
		{name: "dataset-of-another-namespace", pod: pod([]corev1.Volume{inline("x", map[string]string{contract.AttrDataset: "shared/private"}, "")}, label("true")),
			deny: "may not use Dataset shared/private: add \"" + ns + "\" to its spec.access.namespaces"},
		{name: "bad-dataset-name", pod: pod([]corev1.Volume{inline("x", map[string]string{contract.AttrDataset: "Bad_Name"}, "")}, label("true")),
			deny: `"dataset"="Bad_Name"`},
		{name: "init-container-without-native", pod: pod([]corev1.Volume{srcVol}, label("true"), initMounting("weights")),
			config: func(c *Config) { c.NativeSidecar = NativeNever }, deny: "init container \"prepare\" mounts sluice volume \"weights\""},
		{name: "name-clash", pod: pod([]corev1.Volume{srcVol}, label("true"), func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: contract.SidecarName})
		}), deny: "already has a container named"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDefaulter(t, tc.config)
			got, ok := defaultOrDeny(t, d, tc.pod, tc.deny)
			if !ok {
				return
			}
			if changed := !equality.Semantic.DeepEqual(got, tc.pod); changed != tc.changed {
				t.Fatalf("pod changed = %v, want %v", changed, tc.changed)
			}
			if tc.changed {
				checkConverted(t, d, tc.pod, got)
			}
			golden(t, tc.name, got)
		})
	}
}

// defaultOrDeny runs d.Default on a copy of pod. With deny set it fails
// unless the pod is denied with a message containing deny, and reports
// false; else it fails on any error and returns the mutated copy.
func defaultOrDeny(t *testing.T, d *Defaulter, pod *corev1.Pod, deny string) (*corev1.Pod, bool) {
	t.Helper()
	got := pod.DeepCopy()
	err := d.Default(context.Background(), got)
	if deny != "" {
		if err == nil || !isDenial(err) || !strings.Contains(err.Error(), deny) {
			t.Fatalf("Default: %v; want a denial containing %q", err, deny)
		}
		return nil, false
	}
	if err != nil {
		t.Fatalf("Default: %v", err)
	}
	return got, true
}

func newTestDefaulter(t testing.TB, mod func(*Config)) *Defaulter {
	t.Helper()
	cfg := DefaultConfig()
	if mod != nil {
		mod(cfg)
		cfg.setDefaults()
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(NewScheme()).WithObjects(cluster()...).Build()
	return &Defaulter{Config: cfg, Client: c, APIReader: c}
}

// checkConverted asserts what every converted pod must satisfy.
func checkConverted(t *testing.T, d *Defaulter, orig, got *corev1.Pod) {
	t.Helper()
	mode := got.Annotations[contract.InjectedAnnotation]
	checkDatasetsAnnotation(t, got)
	var sidecar corev1.Container
	switch mode {
	case modeNative:
		sidecar = got.Spec.InitContainers[0]
		if sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways || sidecar.StartupProbe == nil {
			t.Errorf("native sidecar without restartPolicy Always or startupProbe")
		}
	case modePostStart:
		sidecar = got.Spec.Containers[0]
		if sidecar.Lifecycle == nil || sidecar.Lifecycle.PostStart == nil {
			t.Errorf("fallback sidecar without postStart hook")
		}
	default:
		t.Fatalf("annotation %s = %q", contract.InjectedAnnotation, mode)
	}
	if sidecar.Name != contract.SidecarName {
		t.Fatalf("first container is %q, want the sidecar", sidecar.Name)
	}
	vols, err := sidecarVolumes(&sidecar)
	if err != nil || len(vols) == 0 {
		t.Fatalf("sidecar volumes: %v %v", vols, err)
	}
	converted := map[string]bool{}
	for _, v := range vols {
		converted[v.Name] = true
	}
	for _, v := range got.Spec.Volumes {
		if v.CSI != nil && v.CSI.Driver == contract.DriverName {
			t.Errorf("volume %q is still a csi.sluice.dev volume", v.Name)
		}
		if converted[v.Name] && v.EmptyDir == nil {
			t.Errorf("converted volume %q is not an emptyDir", v.Name)
		}
	}
	for _, list := range [][]corev1.Container{got.Spec.InitContainers, got.Spec.Containers} {
		for _, c := range list {
			if c.Name == contract.SidecarName {
				continue
			}
			if c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
				t.Errorf("app container %q became privileged", c.Name)
			}
			for _, m := range c.VolumeMounts {
				if converted[m.Name] && (m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer) {
					t.Errorf("container %q mounts %q without HostToContainer", c.Name, m.Name)
				}
			}
		}
	}
	if !equality.Semantic.DeepEqual(got.Spec.SecurityContext, orig.Spec.SecurityContext) {
		t.Errorf("the pod's security context changed")
	}
	// Idempotent: a second pass (reinvocation) changes nothing.
	again := got.DeepCopy()
	if err := d.Default(context.Background(), again); err != nil {
		t.Fatalf("second Default: %v", err)
	}
	if !equality.Semantic.DeepEqual(again, got) {
		t.Errorf("a second Default changed the pod")
	}
}

// checkDatasetsAnnotation asserts that a converted pod names exactly the
// Datasets its sluice volumes read through cache workers.
func checkDatasetsAnnotation(t *testing.T, got *corev1.Pod) {
	t.Helper()
	var want []string
	for _, c := range append(append([]corev1.Container(nil), got.Spec.InitContainers...), got.Spec.Containers...) {
		if c.Name != contract.SidecarName && !strings.HasPrefix(c.Name, contract.CopierPrefix) {
			continue
		}
		vols, err := sidecarVolumes(&c)
		if err != nil {
			t.Fatalf("container %s: %v", c.Name, err)
		}
		for _, v := range vols {
			if v.Dataset != "" && !slices.Contains(want, v.Dataset) {
				want = append(want, v.Dataset)
			}
		}
	}
	if a := got.Annotations[contract.DatasetsAnnotation]; a != strings.Join(want, ",") {
		t.Errorf("annotation %s = %q, want %q", contract.DatasetsAnnotation, a, strings.Join(want, ","))
	}
}

func golden(t *testing.T, name string, p *corev1.Pod) {
	t.Helper()
	data, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", name+".golden.yaml")
	if *update {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./webhook -update to create it)", err)
	}
	if !bytes.Equal(data, want) {
		t.Errorf("%s differs from the result (go test ./webhook -update rewrites it):\n%s", path, data)
	}
}

// TestReinvocation: another webhook moved an init container before the
// sidecar and dropped its restartPolicy; the reinvocation restores both.
func TestReinvocation(t *testing.T) {
	d := newTestDefaulter(t, nil)
	p := pod([]corev1.Volume{srcVol}, label("true"), initMounting("weights"))
	if err := d.Default(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	want := p.DeepCopy()
	side := p.Spec.InitContainers[0]
	side.RestartPolicy = nil
	p.Spec.InitContainers = []corev1.Container{{Name: "vault-agent", Image: "vault"}, p.Spec.InitContainers[1], side}
	p.Spec.Containers[0].VolumeMounts[0].MountPropagation = nil
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "late", VolumeMounts: []corev1.VolumeMount{{Name: "weights", MountPath: "/w"}}})
	if err := d.Default(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if got := p.Spec.InitContainers[0]; got.Name != contract.SidecarName || got.RestartPolicy == nil ||
		*got.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("init containers after reinvocation: first %q restartPolicy %v", got.Name, got.RestartPolicy)
	}
	if !equality.Semantic.DeepEqual(p.Spec.InitContainers[0], want.Spec.InitContainers[0]) {
		t.Errorf("sidecar changed by the reinvocation")
	}
	for _, c := range p.Spec.Containers {
		if m := c.VolumeMounts[0]; m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer {
			t.Errorf("container %q: propagation not restored", c.Name)
		}
	}
	// A sluice volume added after the conversion is refused.
	p.Spec.Volumes = append(p.Spec.Volumes, datasetVol)
	if err := d.Default(context.Background(), p); err == nil || !strings.Contains(err.Error(), "added after the pod was converted") {
		t.Errorf("late sluice volume: %v", err)
	}
}

// TestAPIReaderOnCacheMiss: a PV the cache has not seen yet is read once
// from the API server.
func TestAPIReaderOnCacheMiss(t *testing.T) {
	d := newTestDefaulter(t, nil)
	var objs []client.Object
	for _, o := range cluster() {
		if o.GetName() != "pv-models" {
			objs = append(objs, o)
		}
	}
	d.Client = fake.NewClientBuilder().WithScheme(NewScheme()).WithObjects(objs...).Build()
	p := pod([]corev1.Volume{claim("models", "models")}, label("true"))
	if err := d.Default(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if p.Annotations[contract.InjectedAnnotation] == "" {
		t.Fatal("the PVC's PV was not found through the API reader")
	}
	d.APIReader = nil
	p = pod([]corev1.Volume{claim("models", "models")}, label("true"))
	if err := d.Default(context.Background(), p); err != nil || p.Annotations[contract.InjectedAnnotation] != "" {
		t.Fatalf("without the API reader the PV is unknown and the pod must pass untouched (err %v)", err)
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, yaml, want string
	}{
		{"empty", "", ""},
		{"platform", "profile: eci\nplatformProfiles:\n  eci:\n    annotations: {a: b}\n", ""},
		{"unknown field", "profle: eci\n", "unknown field \"profle\""},
		{"unknown profile", "profile: eci\n", "profile \"eci\""},
		{"bad native", "nativeSidecar: sometimes\n", "nativeSidecar \"sometimes\""},
		{"empty selector", "serverless:\n  nodeSelectors: [{}]\n", "is empty"},
		{"bad cache", "sidecar:\n  cacheDisk: lots\n", "sidecar.cacheDisk"},
		{"bad url", "controllerURL: ftp://x\n", "controllerURL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := LoadConfig(p)
			if tc.want == "" {
				if err != nil || c.Sidecar.Image == "" || len(c.Serverless.NodeSelectors) == 0 {
					t.Fatalf("LoadConfig: %v (%+v)", err, c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadConfig: %v; want %q", err, tc.want)
			}
		})
	}
}
