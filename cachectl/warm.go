package cachectl

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
)

// Warm-up. The sidecars' heartbeats say which objects each pod read first
// (contract.Heartbeat.FirstReads); the controller keeps the ranking of
// the latest burst in status.firstReads. When the pods of the next burst
// are admitted (incoming.go) and none of them has been heard from yet,
// the controller reads those objects through the workers once, at
// readahead priority and at most what the workers' memory tiers hold, so
// that the burst's first reads find them in the workers' caches, or
// already on their way from the origin.

// warmDue reports whether ds's workers should be warmed now: workers are
// wanted, pods are coming but none of the Dataset's clients reports yet,
// the last burst left first reads, and no warm-up runs or started within
// incomingWindow (one per burst).
func warmDue(ds *v1alpha1.Dataset, d decision, running bool, now time.Time) bool {
	if len(ds.Status.FirstReads) == 0 || d.workers == 0 || d.incoming == 0 || d.clients > 0 || running {
		return false
	}
	w := ds.Status.Warm
	return w == nil || w.StartTime == nil || now.Sub(w.StartTime.Time) > incomingWindow
}

// startWarm warms the workers with status.firstReads, at most the memory
// tiers of the desired workers.
func (r *DatasetReconciler) startWarm(ds *v1alpha1.Dataset, desired int32, coming int) {
	mem := resource.MustParse(defaultMemory)
	if ds.Spec.Cache.Memory != nil {
		mem = *ds.Spec.Cache.Memory
	}
	r.startLoad(ds, warmKind, Load{Paths: ds.Status.FirstReads, Limit: mem.Value() * int64(desired), Warm: true},
		fmt.Sprintf("%d pods coming: warming the cache workers with the %d objects the last burst read first",
			coming, len(ds.Status.FirstReads)))
}
