package webhook

import (
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/contract"
)

// sidecarSizing is what the sidecar of one pod gets.
type sidecarSizing struct {
	resources   corev1.ResourceRequirements
	cacheMemory string // --cache-memory, per volume
}

// sizeSidecar sizes the sidecar of pod, which serves n volumes: the
// configured resources, with a memory request and limit — when the
// configuration sets none, or the pod sets its own memory tier — of what n
// volumes' caches need (contract.SidecarMemory at the default block size
// and parallel fetches); then the pod's annotations. A bad quantity, a
// request above its limit or a memory limit that cannot hold one block per
// volume is denied, naming the annotation.
func (d *Defaulter) sizeSidecar(pod *corev1.Pod, n int) (sidecarSizing, error) {
	cfg := d.Config.Sidecar
	s := sidecarSizing{resources: *cfg.Resources.DeepCopy(), cacheMemory: cfg.CacheMemory}
	r := &s.resources
	if r.Requests == nil {
		r.Requests = corev1.ResourceList{}
	}
	if r.Limits == nil {
		r.Limits = corev1.ResourceList{}
	}
	tier, _ := resource.ParseQuantity(cfg.CacheMemory) // validated with the configuration
	raw, own := pod.Annotations[contract.CacheMemoryAnnotation]
	if own {
		q, err := resource.ParseQuantity(raw)
		if err != nil || q.Value() < blockcache.DefaultBlockSize {
			return s, deny("annotation %s=%q: want a quantity of at least 4Mi (one cache block), such as 512Mi",
				contract.CacheMemoryAnnotation, raw)
		}
		tier, s.cacheMemory = q, strconv.FormatInt(q.Value(), 10)
	}
	need := limitFor(contract.SidecarMemory(n, tier.Value(), blockcache.DefaultBlockSize, blockcache.DefaultMaxFetches))
	needQ := *resource.NewQuantity(need, resource.BinarySI)
	computed := map[*corev1.ResourceList]bool{} // the memory request or limit is the computed one
	for _, l := range []*corev1.ResourceList{&r.Requests, &r.Limits} {
		if _, set := (*l)[corev1.ResourceMemory]; !set || own {
			(*l)[corev1.ResourceMemory] = needQ
			computed[l] = true
		}
	}
	for _, a := range []struct {
		annotation string
		list       corev1.ResourceList
		name       corev1.ResourceName
		example    string
	}{
		{contract.SidecarCPURequestAnnotation, r.Requests, corev1.ResourceCPU, "250m"},
		{contract.SidecarCPULimitAnnotation, r.Limits, corev1.ResourceCPU, "2"},
		{contract.SidecarMemoryRequestAnnotation, r.Requests, corev1.ResourceMemory, "512Mi"},
		{contract.SidecarMemoryLimitAnnotation, r.Limits, corev1.ResourceMemory, "1Gi"},
	} {
		raw, ok := pod.Annotations[a.annotation]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(raw)
		if err != nil || q.Sign() <= 0 {
			return s, deny("annotation %s=%q: want a positive quantity such as %s", a.annotation, raw, a.example)
		}
		a.list[a.name] = q
		switch a.annotation {
		case contract.SidecarMemoryRequestAnnotation:
			delete(computed, &r.Requests)
		case contract.SidecarMemoryLimitAnnotation:
			delete(computed, &r.Limits)
		}
	}
	// A computed memory value yields to one the pod or the configuration set.
	req, lim := r.Requests[corev1.ResourceMemory], r.Limits[corev1.ResourceMemory]
	switch {
	case req.Cmp(lim) <= 0:
	case computed[&r.Limits]:
		r.Limits[corev1.ResourceMemory] = req
	case computed[&r.Requests]:
		r.Requests[corev1.ResourceMemory] = lim
	}
	for _, c := range []struct {
		name                corev1.ResourceName
		request, limitAnnot string
	}{
		{corev1.ResourceCPU, contract.SidecarCPURequestAnnotation, contract.SidecarCPULimitAnnotation},
		{corev1.ResourceMemory, contract.SidecarMemoryRequestAnnotation, contract.SidecarMemoryLimitAnnotation},
	} {
		req, okR := r.Requests[c.name]
		lim, okL := r.Limits[c.name]
		if okR && okL && req.Cmp(lim) > 0 {
			return s, deny("the sluice sidecar's %s request %s is above its limit %s: set annotation %s (or %s) so that the request fits",
				c.name, req.String(), lim.String(), c.limitAnnot, c.request)
		}
	}
	if lim, ok := r.Limits[corev1.ResourceMemory]; ok {
		floor := limitFor(contract.SidecarMemory(n, blockcache.DefaultBlockSize, blockcache.DefaultBlockSize, 1))
		if lim.Value() < floor {
			return s, deny("the sluice sidecar's memory limit %s cannot hold %d volume(s) of one 4Mi cache block each beside its own %dMi: "+
				"want at least %dMi (annotation %s)", lim.String(), n, contract.SidecarBaseMemory>>20, floor>>20,
				contract.SidecarMemoryLimitAnnotation)
		}
	}
	return s, nil
}

// limitFor is the memory limit under which a sidecar's caches get need
// bytes (its SidecarMemoryFraction), in whole MiB.
func limitFor(need int64) int64 {
	l := int64(float64(need)/contract.SidecarMemoryFraction) + 1
	return (l + (1 << 20) - 1) >> 20 << 20
}

// String is for logs and tests.
func (s sidecarSizing) String() string {
	return fmt.Sprintf("requests %v limits %v cacheMemory %s", s.resources.Requests, s.resources.Limits, s.cacheMemory)
}
