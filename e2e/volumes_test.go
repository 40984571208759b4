//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/internal/contract"
)

func (e *env) sourceURL() string {
	return "s3://data?pathStyle=true&endpoint=" + e.origin.endpoint
}

// namespace creates a test namespace with its default service account and
// the origin credentials as a Secret.
func (e *env) namespace(t *testing.T, name string) {
	ctx := context.Background()
	// A namespace left by an interrupted run goes first.
	if err := e.cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err == nil || !apierrors.IsNotFound(err) {
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
			if _, err := e.cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("namespace %s left by an earlier run is still there", name)
			}
		}
	}
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := e.cs.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no default service account in %s: %v", name, err)
		}
	}
	_, err := e.cs.CoreV1().Secrets(name).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "origin"},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": e.origin.access, "AWS_SECRET_ACCESS_KEY": e.origin.secret}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// checker is a busybox pod that verifies the dataset at /data: every file's
// SHA-256 must match, else it exits 1.
func (e *env) checker(name string, vol corev1.Volume) *corev1.Pod {
	var script []string
	for p, data := range e.files {
		sum := sha256.Sum256(data)
		script = append(script, fmt.Sprintf(`echo "%s  /data/%s" | sha256sum -c - || exit 1`, hex.EncodeToString(sum[:]), p))
	}
	script = append(script, "ls -l /data /data/models")
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Volumes: []corev1.Volume{vol},
			Containers: []corev1.Container{{Name: "check", Image: "sluice.local/busybox:e2e", ImagePullPolicy: corev1.PullNever,
				Command:      []string{"sh", "-c", strings.Join(script, "\n")},
				VolumeMounts: []corev1.VolumeMount{{Name: vol.Name, MountPath: "/data", ReadOnly: true}}}}}}
}

// runToCompletion creates pod and waits until it succeeds (or fails).
func (e *env) runToCompletion(t *testing.T, ns string, pod *corev1.Pod, timeout time.Duration) time.Duration {
	ctx := context.Background()
	start := time.Now()
	if _, err := e.cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cs.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
	})
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return time.Since(start)
		case corev1.PodFailed:
			t.Fatalf("pod %s failed: %s", pod.Name, e.logs(ns, pod.Name))
		}
	}
	events, _ := e.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	var msgs []string
	for _, ev := range events.Items {
		msgs = append(msgs, ev.Reason+": "+ev.Message)
	}
	t.Fatalf("pod %s did not complete within %s; events:\n%s\ncontainer logs:\n%s", pod.Name, timeout, strings.Join(msgs, "\n"),
		e.logs(ns, pod.Name))
	return 0
}

// logs reads a pod's container logs from the kubelet's pod log directory
// on this node (the API's log endpoint does not work on this cluster).
func (e *env) logs(ns, pod string) string {
	files, _ := filepath.Glob(filepath.Join(e.out, "pod-logs", ns+"_"+pod+"_*", "*", "*.log"))
	var out strings.Builder
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if len(b) > 4096 {
			b = b[len(b)-4096:]
		}
		fmt.Fprintf(&out, "--- %s\n%s", filepath.Base(filepath.Dir(f)), b)
	}
	if out.Len() == 0 {
		return "(no logs found)"
	}
	return out.String()
}

// Path (1): a PVC of a sluice StorageClass, provisioned by sluice csi
// itself; a pod reads the dataset and checks every byte.
func TestPVCWithStorageClass(t *testing.T) {
	e, ns := shared, "e2e-pvc"
	e.namespace(t, ns)
	ctx := context.Background()
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sluice-e2e"}, Provisioner: contract.DriverName,
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingImmediate),
		Parameters: map[string]string{contract.AttrSource: e.sourceURL(),
			"csi.storage.k8s.io/node-stage-secret-name": "origin", "csi.storage.k8s.io/node-stage-secret-namespace": ns}}
	if _, err := e.cs.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cs.StorageV1().StorageClasses().Delete(context.Background(), sc.Name, metav1.DeleteOptions{})
	})
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "models"},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To(sc.Name), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	if _, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		got, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, pvc.Name, metav1.GetOptions{})
		if err == nil && got.Status.Phase == corev1.ClaimBound {
			t.Logf("PVC bound to %s", got.Spec.VolumeName)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PVC not bound within 60 s (phase %v, err %v)", got.Status.Phase, err)
		}
	}
	d := e.runToCompletion(t, ns, e.checker("reader", corev1.Volume{Name: "models", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name, ReadOnly: true}}}), 3*time.Minute)
	t.Logf("pod verified every file through the PVC in %s", d.Round(time.Millisecond))
	// Once no pod uses it, the kubelet unpublishes and unstages the volume:
	// no sluice mount may remain on the node.
	if err := e.cs.CoreV1().Pods(ns).Delete(ctx, "reader", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubelet := filepath.Join(e.out, "kubelet")
	start := time.Now()
	for len(mountsUnder(kubelet, "fuse.sluice")) > 0 {
		if time.Since(start) > time.Minute {
			t.Fatalf("the volume is still staged a minute after its pod went: %v", mountsUnder(kubelet, "fuse.sluice"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("volume unpublished and unstaged %s after the pod was deleted", time.Since(start).Round(time.Millisecond))
}

// Path (2): an inline CSI volume in the pod spec, credentials through
// nodePublishSecretRef.
func TestInlineVolume(t *testing.T) {
	e, ns := shared, "e2e-inline"
	e.namespace(t, ns)
	d := e.runToCompletion(t, ns, e.checker("reader", e.inlineVolume()), 3*time.Minute)
	t.Logf("pod verified every file through an inline volume in %s", d.Round(time.Millisecond))
}

// Path (6): the CSI node plugin pod's process is killed (SIGKILL) and its
// container restarts while a pod reads its volume in a loop: the pod sees
// no error (the FUSE session is served by a child that was moved out of
// the container's cgroup and is adopted by the restarted plugin).
func TestDriverCrashDuringReads(t *testing.T) {
	e, ns := shared, "e2e-restart"
	e.namespace(t, ns)
	ctx := context.Background()
	sum := sha256.Sum256(e.files["models/weights.bin"])
	script := fmt.Sprintf(`i=0; while [ $i -lt 80 ]; do echo "%s  /data/models/weights.bin" | sha256sum -c - >/dev/null || exit 1; i=$((i+1)); sleep 0.25; done; echo read 80 times`,
		hex.EncodeToString(sum[:]))
	pod := e.startInlineScript(t, ns, "looper", script)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("looper not running (err %v)", err)
		}
	}
	time.Sleep(2 * time.Second)
	restarted := e.killNodePlugin(t)
	t.Logf("killed the CSI node plugin's process (SIGKILL) while the pod reads; its container restarted in %s", restarted.Round(time.Millisecond))
	// The restarted plugin took the FUSE descriptor back from the serving
	// process; now kill that one: a successor takes the connection over.
	time.Sleep(time.Second)
	for _, pid := range e.servingPids(t, "--source "+e.sourceURL()) {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		t.Logf("killed the serving process %d (SIGKILL) while the pod reads", pid)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase == corev1.PodSucceeded {
			t.Log("the pod checked its volume 80 times across both kills and exited 0")
			return
		}
		if p.Status.Phase == corev1.PodFailed {
			t.Fatalf("a read failed across the driver crash: %s", e.logs(ns, pod.Name))
		}
		if time.Now().After(deadline) {
			t.Fatal("the looper did not finish")
		}
	}
}

// startInlineScript starts a busybox pod that runs script with the node's
// origin as an inline volume at /data; it is deleted at cleanup.
func (e *env) startInlineScript(t *testing.T, ns, name, script string) *corev1.Pod {
	t.Helper()
	pod := e.checker(name, e.inlineVolume())
	pod.Spec.Containers[0].Command = []string{"sh", "-c", script}
	if _, err := e.cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cs.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
	})
	return pod
}

// inlineVolume is the node's origin as an inline sluice volume "models".
func (e *env) inlineVolume() corev1.Volume {
	return corev1.Volume{Name: "models", VolumeSource: corev1.VolumeSource{
		CSI: &corev1.CSIVolumeSource{Driver: contract.DriverName, ReadOnly: ptr.To(true),
			VolumeAttributes:     map[string]string{contract.AttrSource: e.sourceURL()},
			NodePublishSecretRef: &corev1.LocalObjectReference{Name: "origin"}}}}
}

// servingPids are the pids of the CSI sessions' serving processes whose
// command line contains match (the node runs them in the host PID
// namespace).
func (e *env) servingPids(t *testing.T, match string) []int {
	t.Helper()
	out, err := exec.Command("pgrep", "-f", "serve-session.*"+regexp.QuoteMeta(match)).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		t.Fatalf("no serving process matches %q: %v", match, err)
	}
	return pids
}

// killNodePlugin SIGKILLs the main process of the CSI node plugin's
// container (the node runs in the host PID namespace: hostPID) and waits
// until the kubelet has restarted it and it is ready again.
func (e *env) killNodePlugin(t *testing.T) time.Duration {
	t.Helper()
	ctx := context.Background()
	pods, err := e.cs.CoreV1().Pods("sluice-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=sluice-csi-node"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("the CSI node plugin pod: %v (%d pods)", err, len(pods.Items))
	}
	restarts := pods.Items[0].Status.ContainerStatuses[0].RestartCount
	out, err := exec.Command("pgrep", "-f", "sluice csi --mode=node").Output()
	pids := strings.Fields(string(out))
	if err != nil || len(pids) != 1 {
		t.Fatalf("finding the node plugin's process: %v %q", err, out)
	}
	pid, _ := strconv.Atoi(pids[0])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for deadline := start.Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		p, err := e.cs.CoreV1().Pods("sluice-system").Get(ctx, pods.Items[0].Name, metav1.GetOptions{})
		if err == nil && len(p.Status.ContainerStatuses) == 1 {
			s := p.Status.ContainerStatuses[0]
			if s.RestartCount > restarts && s.Ready {
				return time.Since(start)
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the node plugin did not come back within 2 minutes")
		}
	}
}
