package webhook

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/internal/contract"
)

// restrictedApp gives the app container what the restricted Pod Security
// Standard asks of it, so a converted pod's result depends on sluice alone.
func restrictedApp(p *corev1.Pod) {
	for _, list := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for i := range list {
			list[i].SecurityContext = restricted()
		}
	}
}

func restricted() *corev1.SecurityContext {
	return &corev1.SecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](1000),
		AllowPrivilegeEscalation: ptr.To(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
}

// podSecurity is the Pod Security Standard check the API server runs.
func podSecurity(t *testing.T, level api.Level, pod *corev1.Pod) []string {
	t.Helper()
	ev, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var failed []string
	for _, r := range ev.EvaluatePod(api.LevelVersion{Level: level, Version: api.LatestVersion()}, &pod.ObjectMeta, &pod.Spec) {
		if !r.Allowed {
			failed = append(failed, r.ForbiddenReason+": "+r.ForbiddenDetail)
		}
	}
	return failed
}

func TestCopyMode(t *testing.T) {
	copyMode := annotate(contract.ModeAnnotation, contract.ModeCopy)
	sized := inline("sized", map[string]string{contract.AttrDataset: "sized"}, "")
	tests := []struct {
		name      string
		pod       *corev1.Pod
		config    func(*Config)
		sizeLimit string // of the first copied volume's emptyDir ("" none)
		deny      string
	}{
		{name: "copy-annotation-dataset", pod: pod([]corev1.Volume{datasetVol}, copyMode, restrictedApp)},
		{name: "copy-restricted-namespace", pod: pod([]corev1.Volume{datasetVol}, copyMode, restrictedApp, inNamespace("locked"))},
		{name: "copy-namespace-label", pod: pod([]corev1.Volume{datasetVol}, selector, restrictedApp, inNamespace("copying"))},
		{name: "copy-config-default-source", pod: pod([]corev1.Volume{srcVol, datasetVol}, label("true"), initMounting("weights"),
			restrictedApp), config: func(c *Config) { c.Mode = contract.ModeCopy }},
		{name: "copy-size-from-dataset", pod: pod([]corev1.Volume{sized}, copyMode, restrictedApp), sizeLimit: "10768Mi"},
		{name: "copy-size-capped-by-pod", pod: pod([]corev1.Volume{sized}, copyMode, restrictedApp,
			annotate(contract.CopySizeLimitAnnotation, "10Gi")), sizeLimit: "10Gi"},
		{name: "copy-size-pod-only", pod: pod([]corev1.Volume{datasetVol}, copyMode, restrictedApp,
			annotate(contract.CopySizeLimitAnnotation, "2Gi")), sizeLimit: "2Gi"},

		{name: "too-big", pod: pod([]corev1.Volume{sized}, copyMode, annotate(contract.CopySizeLimitAnnotation, "1Gi")),
			deny: `Dataset team/sized holds 10Gi, more than the pod's sluice.dev/copy-size-limit=1Gi`},
		{name: "bad-limit", pod: pod([]corev1.Volume{sized}, copyMode, annotate(contract.CopySizeLimitAnnotation, "lots")),
			deny: `sluice.dev/copy-size-limit="lots": want a positive quantity`},
		{name: "bad-mode", pod: pod([]corev1.Volume{datasetVol}, label("true"), annotate(contract.ModeAnnotation, "rsync")),
			deny: `sluice.dev/mode="rsync": want "fuse" or "copy"`},
		{name: "fuse-in-restricted-namespace", pod: pod([]corev1.Volume{datasetVol}, label("true"), inNamespace("locked")),
			deny: `namespace "locked" enforces the "restricted" Pod Security Standard, which refuses the FUSE sidecar`},
		{name: "copier-name-clash", pod: pod([]corev1.Volume{datasetVol}, copyMode, func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: contract.CopierPrefix + "mine"}}
		}), deny: `names starting with "sluice-copy-" are the sluice copiers'`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDefaulter(t, tc.config)
			got, ok := defaultOrDeny(t, d, tc.pod, tc.deny)
			if !ok {
				return
			}
			checkCopied(t, tc.pod, got)
			if fails := podSecurity(t, api.LevelRestricted, got); len(fails) > 0 {
				t.Errorf("the converted pod fails the restricted Pod Security Standard: %v", fails)
			}
			first := got.Spec.Volumes[0].EmptyDir
			switch {
			case tc.sizeLimit == "" && first.SizeLimit != nil:
				t.Errorf("sizeLimit %v, want none", first.SizeLimit)
			case tc.sizeLimit != "" && (first.SizeLimit == nil || first.SizeLimit.Cmp(resource.MustParse(tc.sizeLimit)) != 0):
				t.Errorf("sizeLimit %v, want %s", first.SizeLimit, tc.sizeLimit)
			}
			// Idempotent: a second pass changes nothing.
			again := got.DeepCopy()
			if err := d.Default(context.Background(), again); err != nil || !equality.Semantic.DeepEqual(again, got) {
				t.Errorf("a second Default changed the pod or failed: %v", err)
			}
			golden(t, tc.name, got)
		})
	}
}

// checkCopied asserts what every pod converted to copy mode satisfies:
// each sluice volume an emptyDir filled by a copier that runs first, read-only
// for every other container, and no FUSE sidecar.
func checkCopied(t *testing.T, orig, got *corev1.Pod) {
	t.Helper()
	if got.Annotations[contract.InjectedAnnotation] != contract.ModeCopy || got.Labels[contract.InjectedLabel] != contract.ModeCopy {
		t.Errorf("not marked %s=%s", contract.InjectedAnnotation, contract.ModeCopy)
	}
	checkDatasetsAnnotation(t, got)
	var copied []string
	for i, v := range orig.Spec.Volumes {
		if maybeSluice(v) {
			if got.Spec.Volumes[i].EmptyDir == nil {
				t.Errorf("volume %q is not an emptyDir", v.Name)
			}
			copied = append(copied, v.Name)
		}
	}
	for i, name := range copied {
		c := got.Spec.InitContainers[i]
		if c.Name != contract.CopierPrefix+name || c.Args[0] != contract.CopySubcommand {
			t.Errorf("init container %d is %q (%v), want the copier of %q first", i, c.Name, c.Args, name)
		}
		if !strings.Contains(strings.Join(c.Args, " "), `"name":"`+name+`"`) {
			t.Errorf("copier %q does not copy volume %q: %v", c.Name, name, c.Args)
		}
	}
	for _, list := range [][]corev1.Container{got.Spec.InitContainers, got.Spec.Containers} {
		for _, c := range list {
			if c.Name == contract.SidecarName {
				t.Errorf("a FUSE sidecar in a copy-mode pod")
			}
			if strings.HasPrefix(c.Name, contract.CopierPrefix) {
				continue
			}
			for _, m := range c.VolumeMounts {
				for _, n := range copied {
					if m.Name == n && !m.ReadOnly {
						t.Errorf("container %q mounts the copied volume %q writable", c.Name, n)
					}
				}
			}
		}
	}
}
