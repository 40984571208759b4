//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sluice-dev/sluice/cachectl"
	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
)

// burstJob is a Job of n converted pods (webhook, sidecar) that each read
// file of dataset and check its sha256 against data; a pod whose check
// fails fails the Job (backoffLimit 0).
func burstJob(name, dataset, file string, data []byte, n int32) *batchv1.Job {
	script := fmt.Sprintf(`echo "%s  /data/%s" | sha256sum -c - || exit 1`, sha256Hex(data), file)
	return &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: batchv1.JobSpec{
		Parallelism: ptr.To(n), Completions: ptr.To(n), BackoffLimit: ptr.To[int32](0),
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{contract.InjectLabel: "true"}},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, NodeSelector: map[string]string{"sluice.dev/e2e": "true"},
				Volumes: []corev1.Volume{datasetVolume("data", dataset)},
				Containers: []corev1.Container{{Name: "app", Image: "sluice.local/busybox:e2e", ImagePullPolicy: corev1.PullNever,
					Command: []string{"sh", "-c", script}, VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data", ReadOnly: true}}}}}}}}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// workerOriginBytes sums sluice_origin_bytes_total less sluice_peer_bytes_total over the Dataset's
// worker pods (their metrics port; pod IPs are reachable from the node).
func (e *env) workerOriginBytes(t *testing.T, ns, dataset string) (float64, int) {
	t.Helper()
	pods, err := e.cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: cachectl.LabelDataset + "=" + dataset})
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	n := 0
	for _, p := range pods.Items {
		if p.Status.PodIP == "" {
			continue
		}
		resp, err := http.Get("http://" + p.Status.PodIP + ":9090/metrics")
		if err != nil {
			t.Logf("worker %s metrics: %v", p.Name, err)
			continue
		}
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(buf.String(), "\n") {
			if v, ok := strings.CutPrefix(line, "sluice_origin_bytes_total "); ok {
				var f float64
				fmt.Sscan(v, &f)
				total += f
				n++
			}
			// What a worker got from a peer did not come from the origin.
			if v, ok := strings.CutPrefix(line, "sluice_peer_bytes_total "); ok {
				var f float64
				fmt.Sscan(v, &f)
				total -= f
			}
		}
	}
	return total, n
}

// Path (5): a burst of 16 Job pods, each converted by the webhook, reads
// one 96 MiB file of a Dataset through its cache workers. The origin is
// read about once (the workers' origin bytes over the file size), the
// controller scales the workers up when the pods are admitted (scale-ahead)
// and on the sidecars' heartbeats, and back down after the burst.
func TestBurstReadsOriginOnce(t *testing.T) {
	e, ns := shared, "e2e-burst"
	e.namespace(t, ns)
	o := e.origin
	data := pattern(96 << 20)
	o.put(t, "burst", map[string][]byte{"shard.bin": data})
	c := e.crClient(t)
	e.dataset(t, c, o, ns, "shard", "burst", v1alpha1.CacheSpec{Memory: ptr.To(resource.MustParse("128Mi")),
		Disk: ptr.To(resource.MustParse("1Gi")), MinWorkers: ptr.To[int32](1), MaxWorkers: ptr.To[int32](3),
		TargetThroughputPerWorker: ptr.To(resource.MustParse("8Mi")), ScaleDownDelay: &metav1.Duration{Duration: 15 * time.Second}})
	const n = 16
	job := burstJob("burst", "shard", "shard.bin", data, n)
	// Watch the workers' StatefulSet while the burst runs: its peak, when
	// it was first asked for, and when that many workers were Ready.
	ctx, stop := context.WithCancel(context.Background())
	type watched struct {
		peak            int32
		peakAt, readyAt time.Duration
	}
	peak := make(chan watched, 1)
	start := time.Now()
	go func() {
		var w watched
		defer func() { peak <- w }()
		for ctx.Err() == nil {
			if s, err := e.cs.AppsV1().StatefulSets(ns).Get(ctx, cachectl.WorkersName("shard"), metav1.GetOptions{}); err == nil {
				if *s.Spec.Replicas > w.peak {
					w.peak, w.peakAt, w.readyAt = *s.Spec.Replicas, time.Since(start), 0
				}
				if w.readyAt == 0 && s.Status.ReadyReplicas >= w.peak {
					w.readyAt = time.Since(start)
				}
			}
			time.Sleep(250 * time.Millisecond)
		}
	}()
	pods := e.runJob(t, ns, job, n, 8*time.Minute)
	took := time.Since(start)
	origin, workers := e.workerOriginBytes(t, ns, "shard")
	stop()
	w := <-peak
	p := w.peak
	t.Logf("workers: %d asked for %s after the Job was created, all %d Ready after %s", p, w.peakAt.Round(time.Millisecond), p,
		w.readyAt.Round(time.Millisecond))
	if first, ok := firstStarted(pods, "app"); ok {
		// An app container starts once its sidecar's mount is ready
		// (the sidecar's startup probe). The kubelet's times are in
		// whole seconds, truncated.
		t.Logf("the first app started (its sidecar's mount ready) at %s after the Job was created (whole seconds); the workers were all Ready at %s",
			first.Sub(start.Truncate(time.Second)).Round(time.Second), w.readyAt.Round(time.Millisecond))
	}
	e.logWorkerStarts(t, ns, "shard", start)
	ratio := origin / float64(len(data))
	t.Logf("%d pods verified %d MiB each in %s; the origin served %.2f× the file (%d workers' sluice_origin_bytes_total); workers peaked at %d",
		n, len(data)>>20, took.Round(time.Millisecond), ratio, workers, p)
	if ratio > 2 {
		t.Errorf("the origin served %.2f× the file to %d pods; want about once", ratio, n)
	}
	if p < 2 {
		t.Errorf("the workers never scaled up during the burst (peak %d)", p)
	}
	// The controller reports what the workers hold (scraped from them).
	for deadline := time.Now().Add(40 * time.Second); ; time.Sleep(time.Second) {
		got := &v1alpha1.Dataset{}
		if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "shard"}, got); err == nil && got.Status.CachedBytes >= int64(len(data)) {
			t.Logf("Dataset status: %d bytes cached in the workers, hit ratio %d%%", got.Status.CachedBytes, got.Status.HitRatio)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the Dataset's status.cachedBytes never reached the file's size")
			break
		}
	}
	downAt := time.Now()
	for deadline := downAt.Add(3 * time.Minute); ; time.Sleep(time.Second) {
		s, err := e.cs.AppsV1().StatefulSets(ns).Get(context.Background(), cachectl.WorkersName("shard"), metav1.GetOptions{})
		if err == nil && *s.Spec.Replicas == 1 {
			t.Logf("workers back to 1 %s after the burst (demand window 30 s + scale-down delay 15 s)", time.Since(downAt).Round(time.Second))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers did not scale back down to 1 within 3 minutes of the burst")
		}
	}
	// The leaving workers hand the blocks they served over to the one
	// that stays, before they end.
	e.waitWorkerPods(t, ns, "shard", 1, 2*time.Minute)
	t.Logf("the leaving workers ended %s after the scale-down began", time.Since(downAt).Round(time.Second))
	before, _ := e.workerOriginBytes(t, ns, "shard")

	// The sidecars' heartbeats said what the burst read first; the next
	// burst's workers are warmed with it when its first pod is admitted.
	got := &v1alpha1.Dataset{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "shard"}, got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Status.FirstReads, []string{"shard.bin"}) {
		t.Fatalf("status.firstReads %q after the burst; want [shard.bin]", got.Status.FirstReads)
	}
	const again = 4
	start = time.Now()
	pods = e.runJob(t, ns, burstJob("burst-again", "shard", "shard.bin", data, again), again, 4*time.Minute)
	took = time.Since(start)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "shard"}, got); err == nil &&
			got.Status.Warm != nil && (got.Status.Warm.CompletionTime != nil || got.Status.Warm.Error != "") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the next burst was not warmed (status.warm %+v)", got.Status.Warm)
		}
	}
	w2 := got.Status.Warm
	if w2.Error != "" || w2.Files != 1 || w2.Bytes != int64(len(data)) {
		t.Fatalf("warm-up of the next burst: %+v; want shard.bin, %d bytes", *w2, len(data))
	}
	base := start.Truncate(time.Second)
	if first, ok := firstStarted(pods, "app"); ok {
		t.Logf("next burst of %d pods: verified in %s; warm-up of shard.bin started %s and ended %s after its Job was created, its first app started at %s (whole seconds)",
			again, took.Round(time.Millisecond), w2.StartTime.Sub(base).Round(time.Second), w2.CompletionTime.Sub(base).Round(time.Second),
			first.Sub(base).Round(time.Second))
	}
	// Workers 1 → 3 → 1: what the leaving workers held stayed in the set,
	// so the next burst did not read it from the origin again.
	after, _ := e.workerOriginBytes(t, ns, "shard")
	again2 := (after - before) / float64(len(data))
	t.Logf("the origin served %.2f× the file during the burst and %.2f× more for the next one, after the scale-down's handover", ratio, again2)
	if ratio+again2 > 1.02 {
		t.Errorf("workers 1 → 3 → 1 and two bursts read the origin %.2f× the file (%.2f + %.2f), want ≤ 1.02", ratio+again2, ratio, again2)
	}
}

// waitWorkerPods waits until the Dataset has exactly n worker pods (the
// terminating ones gone).
func (e *env) waitWorkerPods(t *testing.T, ns, dataset string, n int, limit time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(time.Second) {
		pods, err := e.cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: cachectl.LabelDataset + "=" + dataset})
		if err == nil && len(pods.Items) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Dataset %s still had %d worker pods after %s, want %d", dataset, len(pods.Items), limit, n)
		}
	}
}

// logWorkerStarts logs, for each worker pod of dataset, when it was
// created, scheduled, its container started and it became Ready, from
// start (the API server's times are in whole seconds).
func (e *env) logWorkerStarts(t *testing.T, ns, dataset string, start time.Time) {
	t.Helper()
	pods, err := e.cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: cachectl.LabelDataset + "=" + dataset})
	if err != nil {
		t.Logf("listing the workers: %v", err)
		return
	}
	base := start.Truncate(time.Second)
	since := func(at time.Time) string {
		if at.IsZero() {
			return "-"
		}
		return at.Sub(base).Round(time.Second).String()
	}
	for _, p := range pods.Items {
		var scheduled, ready, started time.Time
		for _, c := range p.Status.Conditions {
			switch c.Type {
			case corev1.PodScheduled:
				scheduled = c.LastTransitionTime.Time
			case corev1.PodReady:
				if c.Status == corev1.ConditionTrue {
					ready = c.LastTransitionTime.Time
				}
			}
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Running != nil {
				started = cs.State.Running.StartedAt.Time
			}
		}
		t.Logf("worker %s: created %s, scheduled %s, started %s, Ready %s after the Job was created (whole seconds)",
			p.Name, since(p.CreationTimestamp.Time), since(scheduled), since(started), since(ready))
	}
	// A worker whose probe failed under the burst's load left the
	// Service for a while: the kubelet's Unhealthy events say why.
	evs, err := e.cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "reason=Unhealthy"})
	if err != nil {
		return
	}
	for _, ev := range evs.Items {
		if strings.HasPrefix(ev.InvolvedObject.Name, cachectl.WorkersName(dataset)) {
			t.Logf("worker %s: %d× %s", ev.InvolvedObject.Name, ev.Count, ev.Message)
		}
	}
}

// firstStarted is the earliest start time of the container named name
// among pods.
func firstStarted(pods []corev1.Pod, name string) (time.Time, bool) {
	var first time.Time
	for _, pod := range pods {
		for _, cs := range pod.Status.ContainerStatuses {
			var at time.Time
			switch {
			case cs.Name != name:
				continue
			case cs.State.Terminated != nil:
				at = cs.State.Terminated.StartedAt.Time
			case cs.State.Running != nil:
				at = cs.State.Running.StartedAt.Time
			}
			if !at.IsZero() && (first.IsZero() || at.Before(first)) {
				first = at
			}
		}
	}
	return first, !first.IsZero()
}
