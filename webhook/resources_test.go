package webhook

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sluice-dev/sluice/internal/contract"
)

// TestSidecarResources: the sidecar's memory follows its volumes and their
// memory tier; the pod's annotations override it; bad ones are denied.
func TestSidecarResources(t *testing.T) {
	two := []corev1.Volume{srcVol, datasetVol}
	tests := []struct {
		name        string
		vols        []corev1.Volume
		annotations map[string]string
		config      func(*Config)
		// want: request and limit of cpu and memory ("" = unset), and --cache-memory.
		cpuReq, cpuLim, memReq, memLim, cacheMemory string
		deny                                        string
	}{
		// (64Mi + 256Mi + 32 × 4Mi) / 0.9 = 498Mi, per volume added 384Mi / 0.9.
		{name: "one volume, defaults", vols: []corev1.Volume{srcVol},
			cpuReq: "100m", memReq: "498Mi", memLim: "498Mi", cacheMemory: "256Mi"},
		{name: "two volumes, defaults", vols: two,
			cpuReq: "100m", memReq: "925Mi", memLim: "925Mi", cacheMemory: "256Mi"},
		{name: "own memory tier", vols: two, annotations: map[string]string{contract.CacheMemoryAnnotation: "64Mi"},
			cpuReq: "100m", memReq: "498Mi", memLim: "498Mi", cacheMemory: "67108864"},
		{name: "memory limit alone lowers the request", vols: []corev1.Volume{srcVol},
			annotations: map[string]string{contract.SidecarMemoryLimitAnnotation: "300Mi"},
			cpuReq:      "100m", memReq: "300Mi", memLim: "300Mi", cacheMemory: "256Mi"},
		{name: "memory request alone raises the limit", vols: []corev1.Volume{srcVol},
			annotations: map[string]string{contract.SidecarMemoryRequestAnnotation: "2Gi"},
			cpuReq:      "100m", memReq: "2Gi", memLim: "2Gi", cacheMemory: "256Mi"},
		{name: "cpu", vols: []corev1.Volume{srcVol},
			annotations: map[string]string{contract.SidecarCPURequestAnnotation: "500m", contract.SidecarCPULimitAnnotation: "2"},
			cpuReq:      "500m", cpuLim: "2", memReq: "498Mi", memLim: "498Mi", cacheMemory: "256Mi"},
		{name: "configured memory is kept", vols: two, config: func(c *Config) {
			c.Sidecar.Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")}}
		}, cpuReq: "", memReq: "512Mi", memLim: "512Mi", cacheMemory: "256Mi"}, // the sidecar shrinks its caches to fit
		{name: "configured request and limit are kept", vols: two, config: func(c *Config) {
			c.Sidecar.Resources = corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")}}
		}, memReq: "64Mi", memLim: "512Mi", cacheMemory: "256Mi"},

		{name: "bad quantity", vols: []corev1.Volume{srcVol}, annotations: map[string]string{contract.SidecarMemoryLimitAnnotation: "lots"},
			deny: `annotation sluice.dev/sidecar-memory-limit="lots": want a positive quantity such as 1Gi`},
		{name: "negative cpu", vols: []corev1.Volume{srcVol}, annotations: map[string]string{contract.SidecarCPURequestAnnotation: "-1"},
			deny: `annotation sluice.dev/sidecar-cpu-request="-1": want a positive quantity`},
		{name: "tier under one block", vols: []corev1.Volume{srcVol}, annotations: map[string]string{contract.CacheMemoryAnnotation: "1Mi"},
			deny: `annotation sluice.dev/cache-memory="1Mi": want a quantity of at least 4Mi`},
		{name: "request above limit", vols: []corev1.Volume{srcVol}, annotations: map[string]string{
			contract.SidecarCPURequestAnnotation: "2", contract.SidecarCPULimitAnnotation: "1"},
			deny: "cpu request 2 is above its limit 1"},
		{name: "limit too small", vols: two, annotations: map[string]string{contract.SidecarMemoryLimitAnnotation: "80Mi"},
			deny: "memory limit 80Mi cannot hold 2 volume(s) of one 4Mi cache block each beside its own 64Mi: want at least 89Mi"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDefaulter(t, tc.config)
			p := pod(tc.vols, label("true"))
			p.Annotations = tc.annotations
			got, ok := defaultOrDeny(t, d, p, tc.deny)
			if !ok {
				return
			}
			var c *corev1.Container
			all := append(got.Spec.InitContainers, got.Spec.Containers...)
			for i := range all {
				if all[i].Name == contract.SidecarName {
					c = &all[i]
				}
			}
			if c == nil {
				t.Fatal("no sidecar")
			}
			for _, q := range []struct {
				what string
				list corev1.ResourceList
				name corev1.ResourceName
				want string
			}{
				{"cpu request", c.Resources.Requests, corev1.ResourceCPU, tc.cpuReq},
				{"cpu limit", c.Resources.Limits, corev1.ResourceCPU, tc.cpuLim},
				{"memory request", c.Resources.Requests, corev1.ResourceMemory, tc.memReq},
				{"memory limit", c.Resources.Limits, corev1.ResourceMemory, tc.memLim},
			} {
				got, ok := q.list[q.name]
				if q.want == "" {
					if ok {
						t.Errorf("%s %s, want none", q.what, got.String())
					}
					continue
				}
				if !ok || got.Cmp(resource.MustParse(q.want)) != 0 {
					t.Errorf("%s %s, want %s", q.what, got.String(), q.want)
				}
			}
			wantArg := "--cache-memory=" + tc.cacheMemory
			found := false
			for _, a := range c.Args {
				found = found || a == wantArg
			}
			if !found {
				t.Errorf("sidecar args %q lack %s", c.Args, wantArg)
			}
		})
	}
}
