package cachectl

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

// testScaleAhead: a Dataset at zero workers that receives 16 converted pods
// gets its workers when the pods are admitted, before any heartbeat: a
// quarter of a worker per pod while its clients are unmeasured, then what
// its clients were seen to read; and back to zero once the pods are gone.
func testScaleAhead(ctx context.Context, t *testing.T, srv *kubeapi.Server, cl client.Client, url endpoint) {
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "burst", Namespace: "ml"}, Spec: v1alpha1.DatasetSpec{
		Source: "s3://bucket", Cache: v1alpha1.CacheSpec{MinWorkers: ptr.To[int32](0), MaxWorkers: ptr.To[int32](8),
			TargetThroughputPerWorker: ptr.To(resource.MustParse("100Mi")),
			ScaleDownDelay:            &metav1.Duration{Duration: time.Second}}}}
	if err := cl.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	defer cl.Delete(ctx, ds)
	key := client.ObjectKey{Namespace: "ml", Name: WorkersName("burst")}
	replicas := func() int32 { return stsReplicas(ctx, cl, key) }
	eventually(t, 10*time.Second, "0 workers", func() bool { return replicas() == 0 })

	start := time.Now()
	var pods []*corev1.Pod
	for i := range 16 {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("burst-%02d", i), Namespace: "ml",
			Labels:      map[string]string{contract.InjectedLabel: "post-start"},
			Annotations: map[string]string{contract.DatasetsAnnotation: "ml/burst"}},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{
				{Name: contract.SidecarName, Image: "sluice"}, {Name: "app", Image: "busybox"}}}}
		if err := cl.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		pods = append(pods, pod)
	}
	eventually(t, 10*time.Second, "4 workers for 16 admitted pods (a quarter of a worker each)", func() bool { return replicas() == 4 })
	t.Logf("16 admitted pods, no heartbeat: 4 workers %s after the first pod", time.Since(start).Round(time.Millisecond))

	// One client reports reading 100 MiB/s: the 15 still coming count at
	// that, and the workers go to maxWorkers.
	tok, uid := srv.PodToken(t, "ml", "burst-00", contract.TokenAudience)
	hb := contract.Heartbeat{PodUID: uid, Namespace: "ml", Name: "burst-00", Datasets: []string{"ml/burst"}, BytesPerSec: 100 << 20}
	eventually(t, 10*time.Second, "8 workers once a client was measured", func() bool {
		postHeartbeat(t, url, tok, hb)
		return replicas() == 8
	})

	for _, p := range pods {
		if err := cl.Delete(ctx, p, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "0 workers once the pods are gone", func() bool { return replicas() == 0 })
}
