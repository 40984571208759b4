package cachectl

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
)

// preloadRetry is how long a failed preload waits before it runs again.
const preloadRetry = time.Minute

// preloadDue reports whether ds's preload should start now: it has paths,
// workers are wanted, none runs, and it never ran, failed a while ago, or
// its interval (spec.preload.every) has passed.
func preloadDue(ds *v1alpha1.Dataset, desired int32, running bool, now time.Time) bool {
	if ds.Spec.Preload == nil || desired == 0 || running {
		return false
	}
	st := ds.Status.Preload
	switch {
	case st == nil || st.StartTime == nil:
		return true
	case st.CompletionTime == nil:
		return st.Error != "" && now.Sub(st.StartTime.Time) >= preloadRetry
	case ds.Spec.Preload.Every != nil:
		return now.Sub(st.CompletionTime.Time) >= ds.Spec.Preload.Every.Duration
	}
	return false
}

// preloadCondition derives the Preloaded condition from the status.
func preloadCondition(st *v1alpha1.DatasetStatus, running bool, gen int64) {
	p := st.Preload
	switch {
	case running && p != nil:
		setCondition(st, v1alpha1.ConditionPreloaded, metav1.ConditionFalse, "Preloading",
			fmt.Sprintf("%d/%d files, %d/%d bytes, about %ds left", p.Files, p.TotalFiles, p.Bytes, p.TotalBytes, p.ETASeconds), gen)
	case p != nil && p.CompletionTime != nil:
		setCondition(st, v1alpha1.ConditionPreloaded, metav1.ConditionTrue, "Preloaded",
			fmt.Sprintf("%d files, %d bytes in the workers' caches", p.Files, p.Bytes), gen)
	case p != nil && p.Error != "":
		setCondition(st, v1alpha1.ConditionPreloaded, metav1.ConditionFalse, "PreloadFailed", p.Error, gen)
	}
}

// loadKind is a preload or a warm-up: its events, and the status field
// its progress goes to.
type loadKind struct {
	name                       string // for the running map and logs
	started, done, failed, how string // event reasons; how is the action
	field                      func(st *v1alpha1.DatasetStatus) **v1alpha1.PreloadStatus
}

var (
	preloadKind = loadKind{name: "preload", started: "PreloadStarted", done: "Preloaded", failed: "PreloadFailed", how: "Preload",
		field: func(st *v1alpha1.DatasetStatus) **v1alpha1.PreloadStatus { return &st.Preload }}
	warmKind = loadKind{name: "warm", started: "WarmStarted", done: "Warmed", failed: "WarmFailed", how: "Warm",
		field: func(st *v1alpha1.DatasetStatus) **v1alpha1.PreloadStatus { return &st.Warm }}
)

// loadKey names a running load.
type loadKey struct {
	types.NamespacedName
	kind string
}

// startPreload runs ds's preload in the background, at most the workers'
// disk capacity.
func (r *DatasetReconciler) startPreload(ds *v1alpha1.Dataset, desired int32) {
	disk := resource.MustParse(defaultDisk)
	if ds.Spec.Cache.Disk != nil {
		disk = *ds.Spec.Cache.Disk
	}
	r.startLoad(ds, preloadKind, Load{Paths: ds.Spec.Preload.Paths, Limit: disk.Value() * int64(desired)},
		fmt.Sprintf("warming the cache workers with %d path(s)", len(ds.Spec.Preload.Paths)))
}

// startLoad runs load l of kind k in the background, reporting progress in
// ds's status and as events; a Dataset's deletion cancels it.
func (r *DatasetReconciler) startLoad(ds *v1alpha1.Dataset, k loadKind, l Load, why string) {
	key := client.ObjectKeyFromObject(ds)
	ctx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	if r.loads == nil {
		r.loads = map[loadKey]context.CancelFunc{}
	}
	r.loads[loadKey{key, k.name}] = cancel
	r.mu.Unlock()
	start := metav1.Now()
	r.patchLoad(ctx, key, k, v1alpha1.PreloadStatus{StartTime: &start})
	r.Recorder.Eventf(ds, nil, corev1.EventTypeNormal, k.started, k.how, "%s", why)
	ds = ds.DeepCopy()
	go func() {
		defer func() {
			r.mu.Lock()
			delete(r.loads, loadKey{key, k.name})
			r.mu.Unlock()
			cancel()
			if r.Wake != nil { // refresh the Preloaded condition
				select {
				case r.Wake <- event.GenericEvent{Object: ds}:
				default:
				}
			}
		}()
		st, err := r.Preloader.Run(ctx, ds, l, func(p v1alpha1.PreloadStatus) {
			p.StartTime = &start
			r.patchLoad(ctx, key, k, p)
		})
		st.StartTime = &start
		if err != nil {
			st.Error = err.Error()
			klog.ErrorS(err, "Loading the workers failed", "dataset", key, "kind", k.name)
			r.Recorder.Eventf(ds, nil, corev1.EventTypeWarning, k.failed, k.how, "%s", st.Error)
		} else {
			now := metav1.Now()
			st.CompletionTime = &now
			r.Recorder.Eventf(ds, nil, corev1.EventTypeNormal, k.done, k.how,
				"%d files, %d bytes in %s", st.Files, st.Bytes, now.Sub(start.Time).Round(time.Millisecond))
		}
		r.patchLoad(context.Background(), key, k, st)
	}()
}

func (r *DatasetReconciler) loadRunning(key types.NamespacedName, k loadKind) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.loads[loadKey{key, k.name}]
	return ok
}

// cancelLoads cancels the Dataset's running loads.
func (r *DatasetReconciler) cancelLoads(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for lk, cancel := range r.loads {
		if lk.NamespacedName == key {
			cancel()
		}
	}
}

// patchLoad writes the status field of kind k (only that field).
func (r *DatasetReconciler) patchLoad(ctx context.Context, key types.NamespacedName, k loadKind, st v1alpha1.PreloadStatus) {
	ds := &v1alpha1.Dataset{}
	if err := r.Client.Get(ctx, key, ds); err != nil {
		return
	}
	before := ds.DeepCopy()
	*k.field(&ds.Status) = &st
	if err := r.Client.Status().Patch(ctx, ds, client.MergeFrom(before)); err != nil {
		klog.V(2).InfoS("Recording load progress failed", "dataset", key, "kind", k.name, "err", err)
	}
}
