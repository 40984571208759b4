package cachectl

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

// testWarmNextBurst: a client's heartbeat says what it read first; the
// Dataset's status keeps it after the client is gone; when a pod of the
// next burst is admitted, the controller reads those objects through the
// (real) worker once, before any client of that burst reports: the
// worker fetches exactly them from the origin, and an object gone from
// the origin is skipped.
func testWarmNextBurst(ctx context.Context, t *testing.T, srv *kubeapi.Server, cl client.Client, url endpoint, w *realWorker) {
	const ns = "burst"
	// The worker serves the dataset "warm" (startWorker).
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "warm", Namespace: ns}, Spec: v1alpha1.DatasetSpec{
		Source: "file:///data", Cache: v1alpha1.CacheSpec{MinWorkers: ptr.To[int32](1), Memory: ptr.To(resource.MustParse("64Mi"))}}}
	tok, uid := srv.PodToken(t, ns, "last-burst-0", contract.TokenAudience) // also makes the namespace
	if err := cl.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	defer cl.Delete(ctx, ds)
	first := []string{"other/skip.bin", "gone.bin"}
	hb := contract.Heartbeat{PodUID: uid, Namespace: ns, Name: "last-burst-0", Datasets: []string{ns + "/warm"},
		FirstReads: map[string][]string{ns + "/warm": first, "elsewhere/x": {"not-this-dataset.bin"}}}
	got := &v1alpha1.Dataset{}
	eventually(t, 10*time.Second, "status.firstReads from the heartbeat", func() bool {
		postHeartbeat(t, url, tok, hb)
		return cl.Get(ctx, client.ObjectKeyFromObject(ds), got) == nil && slices.Equal(got.Status.FirstReads, first)
	})
	if got.Status.Warm != nil {
		t.Fatalf("warmed while a client was reading: %+v", *got.Status.Warm)
	}
	before := w.originBytes(t)

	// The demand window (3 s) passes without a heartbeat; then a pod of
	// the next burst is admitted.
	next := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "next-burst-0", Namespace: ns,
		Labels:      map[string]string{contract.InjectedLabel: "post-start"},
		Annotations: map[string]string{contract.DatasetsAnnotation: ns + "/warm"}},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{
			{Name: contract.SidecarName, Image: "sluice"}, {Name: "app", Image: "busybox"}}}}
	eventually(t, 10*time.Second, "the client's report to expire (status.clients 0)", func() bool {
		return cl.Get(ctx, client.ObjectKeyFromObject(ds), got) == nil && got.Status.Clients == 0
	})
	if err := cl.Create(ctx, next); err != nil {
		t.Fatal(err)
	}
	defer cl.Delete(ctx, next, client.GracePeriodSeconds(0))
	eventually(t, 30*time.Second, "a completed warm-up", func() bool {
		return cl.Get(ctx, client.ObjectKeyFromObject(ds), got) == nil && got.Status.Warm != nil && got.Status.Warm.CompletionTime != nil
	})
	const size = 2 << 20 // other/skip.bin
	if st := got.Status.Warm; st.Files != 1 || st.Bytes != size || st.Error != "" {
		t.Fatalf("warm-up status %+v; want 1 file, %d bytes", *st, size)
	}
	if d := w.originBytes(t) - before; d != size {
		t.Fatalf("the worker fetched %d bytes from the origin during the warm-up; want %d", d, size)
	}
	evs := &eventsv1.EventList{}
	if err := cl.List(ctx, evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(evs.Items, func(e eventsv1.Event) bool { return e.Reason == "Warmed" && e.Regarding.Name == "warm" }) {
		t.Error("no Warmed event on the Dataset")
	}
}
