package cachectl

import (
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
)

func TestScalingDefaults(t *testing.T) {
	tests := []struct {
		name  string
		cache v1alpha1.CacheSpec
		want  ScalerConfig
	}{
		{"defaults", v1alpha1.CacheSpec{}, ScalerConfig{MinWorkers: 1, MaxWorkers: 8, TargetPerWorker: 200 << 20, ScaleDownDelay: 5 * time.Minute}},
		{"scale to zero allowed", v1alpha1.CacheSpec{MinWorkers: ptr.To[int32](0), MaxWorkers: ptr.To[int32](3),
			TargetThroughputPerWorker: ptr.To(resource.MustParse("1Gi")), ScaleDownDelay: &metav1.Duration{Duration: time.Minute}},
			ScalerConfig{MinWorkers: 0, MaxWorkers: 3, TargetPerWorker: 1 << 30, ScaleDownDelay: time.Minute}},
		{"a zero target keeps the default", v1alpha1.CacheSpec{TargetThroughputPerWorker: ptr.To(resource.MustParse("0"))},
			ScalerConfig{MinWorkers: 1, MaxWorkers: 8, TargetPerWorker: 200 << 20, ScaleDownDelay: 5 * time.Minute}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Scaling(&v1alpha1.Dataset{Spec: v1alpha1.DatasetSpec{Cache: tc.cache}}); got != tc.want {
				t.Errorf("Scaling = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestWorkerPod(t *testing.T) {
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "d", Namespace: "ml"},
		Spec: v1alpha1.DatasetSpec{Source: "file:///data", Cache: v1alpha1.CacheSpec{Disk: ptr.To(resource.MustParse("2Gi"))}}}
	tests := []struct {
		name    string
		tmpl    WorkerTemplate
		nonRoot bool
	}{
		{"non-root by default", WorkerTemplate{Image: "img"}, true},
		{"root when asked", WorkerTemplate{Image: "img", RunAsRoot: true}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := workerPod(ds, tc.tmpl)
			c := p.Spec.Containers[0]
			if got := p.Spec.SecurityContext.RunAsNonRoot != nil && *p.Spec.SecurityContext.RunAsNonRoot; got != tc.nonRoot {
				t.Errorf("runAsNonRoot %v, want %v", got, tc.nonRoot)
			}
			if *c.SecurityContext.AllowPrivilegeEscalation || c.SecurityContext.Capabilities.Drop[0] != "ALL" {
				t.Errorf("worker container security context %+v: want no privilege escalation, all capabilities dropped", c.SecurityContext)
			}
			if !slices.Contains(c.Args, "--cache-disk=2Gi") || !slices.Contains(c.Args, "--cache-memory=512Mi") ||
				c.Args[len(c.Args)-1] != "file:///data" || len(c.Env) != 1 || c.Env[0].ValueFrom.SecretKeyRef != nil {
				t.Errorf("args %q env %v: want the sizes, the source last, no credentials without secretRef (POD_IP only)", c.Args, c.Env)
			}
			if p.Spec.Volumes[0].EmptyDir.SizeLimit.String() != "2Gi" {
				t.Errorf("cache emptyDir limit %v, want 2Gi", p.Spec.Volumes[0].EmptyDir.SizeLimit)
			}
		})
	}
}
