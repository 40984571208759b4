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

// startPreload runs ds's preload in the background, reporting progress in
// its status and as events; a Dataset's deletion cancels it.
func (r *DatasetReconciler) startPreload(ds *v1alpha1.Dataset, desired int32) {
	key := client.ObjectKeyFromObject(ds)
	ctx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	if r.preloads == nil {
		r.preloads = map[types.NamespacedName]context.CancelFunc{}
	}
	r.preloads[key] = cancel
	r.mu.Unlock()
	disk := resource.MustParse(defaultDisk)
	if ds.Spec.Cache.Disk != nil {
		disk = *ds.Spec.Cache.Disk
	}
	limit := disk.Value() * int64(desired)
	start := metav1.Now()
	r.patchPreload(ctx, key, v1alpha1.PreloadStatus{StartTime: &start})
	r.Recorder.Eventf(ds, nil, corev1.EventTypeNormal, "PreloadStarted", "Preload",
		"warming the cache workers with %d path(s)", len(ds.Spec.Preload.Paths))
	ds = ds.DeepCopy()
	go func() {
		defer func() {
			r.mu.Lock()
			delete(r.preloads, key)
			r.mu.Unlock()
			cancel()
			if r.Wake != nil { // refresh the Preloaded condition
				select {
				case r.Wake <- event.GenericEvent{Object: ds}:
				default:
				}
			}
		}()
		st, err := r.Preloader.Run(ctx, ds, limit, func(p v1alpha1.PreloadStatus) {
			p.StartTime = &start
			r.patchPreload(ctx, key, p)
		})
		st.StartTime = &start
		if err != nil {
			st.Error = err.Error()
			klog.ErrorS(err, "Preload failed", "dataset", key)
			r.Recorder.Eventf(ds, nil, corev1.EventTypeWarning, "PreloadFailed", "Preload", "%s", st.Error)
		} else {
			now := metav1.Now()
			st.CompletionTime = &now
			r.Recorder.Eventf(ds, nil, corev1.EventTypeNormal, "Preloaded", "Preload",
				"%d files, %d bytes in %s", st.Files, st.Bytes, now.Sub(start.Time).Round(time.Millisecond))
		}
		r.patchPreload(context.Background(), key, st)
	}()
}

func (r *DatasetReconciler) preloadRunning(key types.NamespacedName) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.preloads[key]
	return ok
}

func (r *DatasetReconciler) cancelPreload(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cancel, ok := r.preloads[key]; ok {
		cancel()
	}
}

// patchPreload writes status.preload (only that field).
func (r *DatasetReconciler) patchPreload(ctx context.Context, key types.NamespacedName, st v1alpha1.PreloadStatus) {
	ds := &v1alpha1.Dataset{}
	if err := r.Client.Get(ctx, key, ds); err != nil {
		return
	}
	before := ds.DeepCopy()
	ds.Status.Preload = &st
	if err := r.Client.Status().Patch(ctx, ds, client.MergeFrom(before)); err != nil {
		klog.V(2).InfoS("Recording preload progress failed", "dataset", key, "err", err)
	}
}
