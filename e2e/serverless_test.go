//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sluice-dev/sluice/cachectl"
	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
)

// Paths (3), (4) and (5) run on the components `make deploy` started as
// pods: the webhook converts pods, their sluice-fuse sidecars read a
// Dataset through the cache workers the controller runs, heartbeat to the
// controller, and are told to exit once a Job's app is done.

// crClient reads and writes Datasets.
func (e *env) crClient(t *testing.T) client.Client {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(e.out, "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: cachectl.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// modelsDataset creates namespace ns and in it a Dataset "models" of the
// test files, uploaded to bucket on the node origin, with a small cache.
func (e *env) modelsDataset(t *testing.T, ns, bucket string) {
	t.Helper()
	e.namespace(t, ns)
	e.origin.put(t, bucket, e.files)
	c := e.crClient(t)
	e.dataset(t, c, e.origin, ns, "models", bucket, v1alpha1.CacheSpec{Memory: ptr.To(resource.MustParse("64Mi")),
		Disk: ptr.To(resource.MustParse("1Gi"))})
}

// dataset creates a Dataset of bucket on the node origin in ns and waits
// until a cache worker serves it (phase Ready), or, with minWorkers 0,
// until it settles at no worker (phase Idle).
func (e *env) dataset(t *testing.T, c client.Client, o *nodeOrigin, ns, name, bucket string, cache v1alpha1.CacheSpec) {
	t.Helper()
	ctx := context.Background()
	if _, err := e.cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "node-origin"},
		StringData: map[string]string{contract.EnvAccessKeyID: o.access, contract.EnvSecretAccessKey: o.secret}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: v1alpha1.DatasetSpec{
		Source: "s3://" + bucket, SecretRef: &corev1.LocalObjectReference{Name: "node-origin"},
		Options: v1alpha1.SourceOptions{Endpoint: o.endpoint, PathStyle: true}, Cache: cache}}
	if err := c.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	want := v1alpha1.PhaseReady
	if cache.MinWorkers != nil && *cache.MinWorkers == 0 {
		want = v1alpha1.PhaseIdle
	}
	start := time.Now()
	for deadline := start.Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		got := &v1alpha1.Dataset{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(ds), got); err == nil && got.Status.Phase == want {
			t.Logf("Dataset %s/%s %s in %s (%d workers, %s)", ns, name, want, time.Since(start).Round(time.Millisecond),
				got.Status.ReadyWorkers, got.Status.Workers)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dataset %s/%s not %s within 3 minutes", ns, name, want)
		}
	}
}

func datasetVolume(name, dataset string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
		Driver: contract.DriverName, ReadOnly: ptr.To(true), VolumeAttributes: map[string]string{contract.AttrDataset: dataset}}}}
}

// Path (3): a pod that targets serverless nodes by scheduling intent (a
// toleration of the virtual-kubelet taint, no opt-in label) is converted
// by the webhook; its native sidecar reads the Dataset through the cache
// workers. The pod must run, so it may land on the real node: virtual-e2e,
// the node object without a kubelet, is NotReady (a taint this pod does
// not tolerate). Relabelling the real node as serverless instead would
// evict the CSI and device plugins, which stay off serverless nodes.
func TestServerlessPodThroughWebhook(t *testing.T) {
	e, ns := shared, "e2e-serverless"
	e.modelsDataset(t, ns, "serverless")
	pod := e.checker("serverless-reader", datasetVolume("models", "models"))
	pod.Spec.Tolerations = []corev1.Toleration{{Key: contract.ServerlessTaintKey, Operator: corev1.TolerationOpExists}}
	d := e.runToCompletion(t, ns, pod, 3*time.Minute)
	got, err := e.cs.CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations[contract.InjectedAnnotation] != "native-sidecar" || len(got.Spec.InitContainers) == 0 ||
		got.Spec.InitContainers[0].Name != contract.SidecarName || got.Spec.Volumes[0].EmptyDir == nil {
		t.Fatalf("pod not converted to a native sidecar over an emptyDir: annotations %v", got.Annotations)
	}
	t.Logf("serverless pod converted (native sidecar) and verified every file in %s; sidecar ready after %s",
		d.Round(time.Millisecond), sidecarReady(got))
	// kubectl logs: the API server reaches the kubelet at the node's
	// InternalIP (the node's name resolves nowhere).
	logs, err := e.cs.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{Container: "check"}).Do(context.Background()).Raw()
	if err != nil || !strings.Contains(string(logs), ": OK") {
		t.Fatalf("the app's logs through the API server: %v\n%s", err, logs)
	}
}

// sidecarReady is how long the sidecar took from its start until the app
// container started (the kubelet starts the app once the startupProbe
// passes).
func sidecarReady(p *corev1.Pod) time.Duration {
	var side, app time.Time
	for _, s := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		var started time.Time
		switch {
		case s.State.Running != nil:
			started = s.State.Running.StartedAt.Time
		case s.State.Terminated != nil:
			started = s.State.Terminated.StartedAt.Time
		}
		if s.Name == contract.SidecarName {
			side = started
		} else if s.Name == "check" || s.Name == "app" {
			app = started
		}
	}
	return app.Sub(side)
}

// Path (4): a Job whose pod gets a non-native sidecar (postStart hook;
// the annotation chooses it) completes: the reaper tells the sidecar to
// exit once the app has exited.
func TestJobWithSidecarCompletes(t *testing.T) {
	e, ns := shared, "e2e-job"
	e.modelsDataset(t, ns, "jobs")
	tmpl := e.checker("", datasetVolume("models", "models"))
	tmpl.Labels = map[string]string{contract.InjectLabel: "true"}
	tmpl.Annotations = map[string]string{contract.NativeSidecarAnnotation: "false"}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "reader"}, Spec: batchv1.JobSpec{BackoffLimit: ptr.To[int32](0),
		Template: corev1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}}}
	job.Spec.Template.Spec.NodeSelector = map[string]string{"sluice.dev/e2e": "true"}
	pods := e.runJob(t, ns, job, 1, 3*time.Minute)
	p := pods[0]
	if p.Annotations[contract.InjectedAnnotation] != "post-start" || p.Spec.Containers[0].Name != contract.SidecarName {
		t.Fatalf("pod not converted to a postStart sidecar: %v", p.Annotations)
	}
	var appDone, sideDone time.Time
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Terminated == nil {
			t.Fatalf("container %s of a completed Job pod has not terminated", s.Name)
		}
		if s.Name == contract.SidecarName {
			sideDone = s.State.Terminated.FinishedAt.Time
			if s.State.Terminated.ExitCode != 0 {
				t.Errorf("the sidecar exited %d, want 0", s.State.Terminated.ExitCode)
			}
		} else {
			appDone = s.State.Terminated.FinishedAt.Time
		}
	}
	lag := sideDone.Sub(appDone)
	t.Logf("Job completed; the sidecar exited %s after the app (heartbeat → reaper → exit)", lag)
	if lag > 10*time.Second {
		t.Errorf("the sidecar outlived the app by %s; want within 10 s", lag)
	}
}

// failedPodLogs is the container logs of every pod matching selector in
// ns that did not succeed.
func (e *env) failedPodLogs(ns, selector string) string {
	pods, err := e.cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return "listing pods: " + err.Error()
	}
	var out strings.Builder
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded {
			fmt.Fprintf(&out, "=== pod %s (%s)\n%s\n", p.Name, p.Status.Phase, e.logs(ns, p.Name))
		}
	}
	return out.String()
}

// runJob creates job and waits until it completes with n succeeded pods,
// returning them.
func (e *env) runJob(t *testing.T, ns string, job *batchv1.Job, n int, timeout time.Duration) []corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := e.cs.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(timeout); ; time.Sleep(time.Second) {
		j, err := e.cs.BatchV1().Jobs(ns).Get(ctx, job.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range j.Status.Conditions {
			if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
				t.Fatalf("Job %s failed: %s %s\n%s", job.Name, c.Reason, c.Message, e.failedPodLogs(ns, "job-name="+job.Name))
			}
		}
		if int(j.Status.Succeeded) >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Job %s: %d of %d pods succeeded within %s\n%s", job.Name, j.Status.Succeeded, n, timeout,
				e.failedPodLogs(ns, "job-name="+job.Name))
		}
	}
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + job.Name})
	if err != nil {
		t.Fatal(err)
	}
	return pods.Items
}

// The device plugin (deployed as a DaemonSet) advertises sluice.dev/fuse
// on the real kubelet; a pod that asks for one gets /dev/fuse without
// being privileged (what the webhook's platform profiles rely on).
func TestDevicePluginOnKubelet(t *testing.T) {
	e, ns := shared, "e2e-fuse-device"
	e.namespace(t, ns)
	ctx := context.Background()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		n, err := e.cs.CoreV1().Nodes().Get(ctx, "sluice-e2e", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if q, ok := n.Status.Allocatable[contract.FuseResource]; ok && q.Value() > 0 {
			t.Logf("node advertises %s: %s", contract.FuseResource, q.String())
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kubelet does not advertise %s (allocatable %v)", contract.FuseResource, n.Status.Allocatable)
		}
	}
	one := corev1.ResourceList{contract.FuseResource: resource.MustParse("1")}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "fuse-user"}, Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
		NodeSelector: map[string]string{"sluice.dev/e2e": "true"},
		Containers: []corev1.Container{{Name: "app", Image: "sluice.local/busybox:e2e", ImagePullPolicy: corev1.PullNever,
			Command:         []string{"sh", "-c", "test -c /dev/fuse"},
			Resources:       corev1.ResourceRequirements{Requests: one, Limits: one},
			SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(false), AllowPrivilegeEscalation: ptr.To(false)}}}}}
	d := e.runToCompletion(t, ns, pod, 2*time.Minute)
	t.Logf("an unprivileged pod with %s: 1 found /dev/fuse (%s)", contract.FuseResource, d.Round(time.Millisecond))
}

// A Dataset scaled to zero (minWorkers 0) has no workers until a client
// comes: the controller starts a worker when the converted pod is admitted
// (or at its sidecar's first heartbeat, which comes before it mounts), and
// the mount waits for it instead of failing.
func TestScaleFromZero(t *testing.T) {
	e, ns := shared, "e2e-zero"
	e.namespace(t, ns)
	o := e.origin
	o.put(t, "zero", e.files)
	e.dataset(t, e.crClient(t), o, ns, "idle", "zero", v1alpha1.CacheSpec{MinWorkers: ptr.To[int32](0),
		Memory: ptr.To(resource.MustParse("64Mi")), Disk: ptr.To(resource.MustParse("1Gi"))})
	pod := e.checker("first-reader", datasetVolume("models", "idle"))
	pod.Labels = map[string]string{contract.InjectLabel: "true"}
	pod.Spec.NodeSelector = map[string]string{"sluice.dev/e2e": "true"}
	d := e.runToCompletion(t, ns, pod, 3*time.Minute)
	t.Logf("a pod of a Dataset with 0 workers verified every file in %s (its admission started the first worker)", d.Round(time.Millisecond))
}

// A dataset volume on a node with the CSI driver: the node plugin reads
// the Dataset through its cache workers with its own token (the workers
// trust its service account) and admits each pod by namespace: a pod of a
// namespace the Dataset does not list fails to mount with the reason.
func TestCSIDatasetVolume(t *testing.T) {
	e, ns := shared, "e2e-csi-dataset"
	e.modelsDataset(t, ns, "csi-dataset")
	pod := e.checker("csi-reader", datasetVolume("models", "models"))
	pod.Spec.NodeSelector = map[string]string{"sluice.dev/e2e": "true"}
	d := e.runToCompletion(t, ns, pod, 3*time.Minute)
	got, err := e.cs.CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, converted := got.Annotations[contract.InjectedAnnotation]; converted || got.Spec.Volumes[0].CSI == nil {
		t.Fatal("the pod was converted; it should have used the CSI driver")
	}
	t.Logf("a pod read the Dataset through the CSI node plugin and the cache workers in %s", d.Round(time.Millisecond))

	// Another namespace, not in spec.access.namespaces.
	other := "e2e-csi-intruder"
	e.namespace(t, other)
	bad := e.checker("intruder", datasetVolume("models", ns+"/models"))
	bad.Spec.NodeSelector = map[string]string{"sluice.dev/e2e": "true"}
	ctx := context.Background()
	if _, err := e.cs.CoreV1().Pods(other).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		evs, _ := e.cs.CoreV1().Events(other).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=intruder"})
		found := ""
		for _, ev := range evs.Items {
			if ev.Reason == "FailedMount" && strings.Contains(ev.Message, "PermissionDenied") {
				found = ev.Message
			}
		}
		if found != "" {
			t.Logf("refused: %s", found)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no FailedMount/PermissionDenied event for a pod of a namespace the Dataset does not list")
		}
	}
	p, _ := e.cs.CoreV1().Pods(other).Get(ctx, bad.Name, metav1.GetOptions{})
	if p.Status.Phase != corev1.PodPending {
		t.Errorf("the refused pod is %s, want Pending", p.Status.Phase)
	}
	e.cs.CoreV1().Pods(other).Delete(ctx, bad.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
}
