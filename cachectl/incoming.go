package cachectl

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/sluice-dev/sluice/internal/contract"
)

// Scale-ahead. The webhook names the Datasets a converted pod reads in
// contract.DatasetsAnnotation. A pod admitted within incomingWindow that
// is neither finished nor heard from (no heartbeat yet) is a client that
// is coming: its Datasets are reconciled when it is created, and the
// scaler counts it at the per-client throughput the Dataset's clients last
// had (Scaler.perClient), so a burst of pods finds its workers starting
// before the first sidecar reads, instead of a worker per resync after
// the heartbeats arrive.
const (
	// podDatasetsIndex indexes the cached converted pods by the Datasets
	// they read.
	podDatasetsIndex = "sluice.dev/datasets"
	// incomingWindow bounds how long an admitted pod counts as coming
	// (one that never starts must not hold workers up for ever).
	incomingWindow = 5 * time.Minute
	// defaultClientsPerWorker is what a coming client costs before the
	// Dataset's clients have been measured: a quarter of a worker.
	defaultClientsPerWorker = 4
)

// podDatasets is the index function: the Datasets pod o reads.
func podDatasets(o client.Object) []string {
	a := o.GetAnnotations()[contract.DatasetsAnnotation]
	if a == "" {
		return nil
	}
	var out []string
	for _, d := range strings.Split(a, ",") {
		if _, _, ok := splitDataset(d); ok {
			out = append(out, d)
		}
	}
	return out
}

// watchIncoming indexes converted pods by Dataset and reconciles the
// Datasets of every pod created.
func (r *DatasetReconciler) watchIncoming(mgr ctrl.Manager, b *builder.Builder) (*builder.Builder, error) {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &corev1.Pod{}, podDatasetsIndex, podDatasets); err != nil {
		return nil, fmt.Errorf("indexing pods by Dataset: %w", err)
	}
	created := predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return true },
		UpdateFunc:  func(event.UpdateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
	toDatasets := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		var reqs []reconcile.Request
		for _, d := range podDatasets(o) {
			ns, name, _ := splitDataset(d)
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}})
		}
		return reqs
	})
	return b.Watches(&corev1.Pod{}, toDatasets, builder.WithPredicates(created)), nil
}

// incoming counts the clients of dataset ("namespace/name") that are
// coming (see above).
func (r *DatasetReconciler) incoming(ctx context.Context, dataset string) (int, error) {
	pods := &corev1.PodList{}
	if err := r.Client.List(ctx, pods, client.MatchingFields{podDatasetsIndex: dataset}); err != nil {
		return 0, fmt.Errorf("listing the pods of Dataset %s: %w", dataset, err)
	}
	now := r.now()
	n := 0
	for _, p := range pods.Items {
		switch {
		case p.DeletionTimestamp != nil, p.Status.Phase == corev1.PodSucceeded, p.Status.Phase == corev1.PodFailed,
			now.Sub(p.CreationTimestamp.Time) > incomingWindow, r.Demand.Heard(string(p.UID), now):
			continue
		}
		n++
	}
	return n, nil
}
