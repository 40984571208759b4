//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
)

// Volume health on the real kubelet (feature gate CSIVolumeHealth, probed
// every volumeStatsAggPeriod = 10 s): a pod reads a static sluice PV whose
// origin sits behind a proxy on the node; the proxy is blackholed and the
// pod's status.volumeHealth shows the condition, then it clears once the
// origin answers again.
func TestVolumeHealthOnKubelet(t *testing.T) {
	e, ns := shared, "e2e-health"
	e.namespace(t, ns)
	ctx := context.Background()
	ip, err := os.ReadFile(filepath.Join(e.out, "node-ip"))
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.New("http://"+strings.TrimPrefix(e.origin.endpoint, "http://"),
		faultproxy.Config{Listen: strings.TrimSpace(string(ip)) + ":0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	pvName := "sluice-health-" + ns
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName}, Spec: corev1.PersistentVolumeSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
		Capacity:    corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
		PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
			Driver: contract.DriverName, VolumeHandle: pvName, ReadOnly: true,
			VolumeAttributes:   map[string]string{contract.AttrSource: "s3://data?pathStyle=true&endpoint=" + proxy.URL()},
			NodeStageSecretRef: &corev1.SecretReference{Name: "origin", Namespace: ns}}}}}
	if _, err := e.cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cs.CoreV1().PersistentVolumes().Delete(context.Background(), pvName, metav1.DeleteOptions{}) })
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "models"}, Spec: corev1.PersistentVolumeClaimSpec{
		StorageClassName: ptr.To(""), VolumeName: pvName, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
		Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	if _, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := e.checker("health", corev1.Volume{Name: "models", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name, ReadOnly: true}}})
	pod.Spec.Containers[0].Command = []string{"sh", "-c", "ls /data >/dev/null && sleep 3600"}
	if _, err := e.cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cs.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
	})
	health := func() []corev1.PodVolumeHealth {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Status.VolumeHealth
	}
	waitFor := func(what string, within time.Duration, ok func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !ok() {
			if time.Since(start) > within {
				t.Fatalf("%s: not within %s (volumeHealth %+v)", what, within, health())
			}
			time.Sleep(time.Second)
		}
		return time.Since(start)
	}
	waitFor("pod running", 2*time.Minute, func() bool {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	if h := health(); len(h) != 0 {
		t.Fatalf("a healthy volume reports %+v", h)
	}
	proxy.SetBlackhole(true)
	d := waitFor("volume health reported", 45*time.Second, func() bool {
		for _, v := range health() {
			if v.Name == "models" && len(v.HealthConditions) > 0 {
				return true
			}
		}
		return false
	})
	t.Logf("origin blackholed: pod status.volumeHealth %+v after %s", health(), d.Round(time.Second))
	running, err := e.cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	abnormal := `sluice_csi_volume_abnormal{volume_id="` + pvName + `"}`
	waitFor("the node plugin's metric "+abnormal+" = 1", 45*time.Second, func() bool { return e.nodePluginMetric(t, abnormal) == "1" })
	for _, name := range externalMetrics(t) {
		series := name + `{namespace="` + ns + `",persistentvolumeclaim="models"}`
		if v := e.kubeletMetric(t, running.Spec.NodeName, series); v == "" {
			t.Errorf("the kubelet exports no %s (deploy/monitoring uses it)", series)
		}
	}
	proxy.SetBlackhole(false)
	d = waitFor("volume health cleared", 45*time.Second, func() bool {
		for _, v := range health() {
			if len(v.HealthConditions) > 0 {
				return false
			}
		}
		return true
	})
	t.Logf("origin back: volume health cleared after %s", d.Round(time.Second))
	waitFor("the node plugin's metric "+abnormal+" = 0", 45*time.Second, func() bool { return e.nodePluginMetric(t, abnormal) == "0" })
}

// kubeletMetric is the value of one series (name{labels} exactly as
// printed, labels sorted) on node's kubelet, through the API server's node
// proxy; "" when it is not exported.
func (e *env) kubeletMetric(t *testing.T, node, series string) string {
	t.Helper()
	return metricValue(t, e.cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", node, "proxy/metrics"), series)
}

// nodePluginMetric is the value of one series on the CSI node plugin's
// /metrics, through the API server's pod proxy.
func (e *env) nodePluginMetric(t *testing.T, series string) string {
	t.Helper()
	pods, err := e.cs.CoreV1().Pods("sluice-system").List(context.Background(),
		metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=sluice-csi-node"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("the CSI node plugin pod: %v", err)
	}
	return metricValue(t, e.cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/namespaces/sluice-system/pods",
		pods.Items[0].Name+":9810", "proxy/metrics"), series)
}

func metricValue(t *testing.T, req *rest.Request, series string) string {
	t.Helper()
	body, err := req.DoRaw(context.Background())
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// externalMetrics are the kubelet metrics deploy/monitoring uses.
func externalMetrics(t *testing.T) []string {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "monitoring", "external-metrics.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			names = append(names, l)
		}
	}
	return names
}
