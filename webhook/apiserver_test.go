package webhook

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

// TestThroughARealAPIServer registers the webhook with a real
// kube-apiserver (url + caBundle) and creates pods through the API: the
// API server calls the webhook, which reads namespaces and PVCs from it.
func TestThroughARealAPIServer(t *testing.T) {
	api := kubeapi.Start(t)
	dir := t.TempDir()
	certDir := filepath.Join(dir, "certs")
	os.MkdirAll(certDir, 0o700)
	writeCert(t, certDir, 1)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "`+api.Host+`", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "`+api.Config.BearerToken+`"}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
`), 0o600)
	t.Setenv("KUBECONFIG", kubeconfig)
	listen, health := freeAddr(t), freeAddr(t)
	o := &Options{Listen: listen, CertDir: certDir, MetricsAddr: "0", HealthAddr: health}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitOK(t, "http://"+health+"/readyz")

	cs := kubernetes.NewForConfigOrDie(api.Config)
	caBundle, _ := os.ReadFile(filepath.Join(certDir, "tls.crt"))
	_, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "sluice"},
		Webhooks: []admissionregv1.MutatingWebhook{{
			Name:                    "pods.sluice.dev",
			ClientConfig:            admissionregv1.WebhookClientConfig{URL: ptr.To("https://" + listen + Path), CABundle: caBundle},
			Rules:                   []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create}, Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			FailurePolicy:           ptr.To(admissionregv1.Fail),
			SideEffects:             ptr.To(admissionregv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      ptr.To(admissionregv1.IfNeededReinvocationPolicy),
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []struct {
		name   string
		labels map[string]string
	}{{"apps", map[string]string{contract.InjectLabel: contract.InjectEnabled}}, {"plain", nil}} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: n.labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().ServiceAccounts(n.name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sluice"}, Provisioner: contract.DriverName}
	if _, err := cs.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "pending", Namespace: "apps"},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To("sluice"), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	if _, err := cs.CoreV1().PersistentVolumeClaims("apps").Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	newPod := func(name, ns string, vols ...corev1.Volume) *corev1.Pod {
		p := pod(vols)
		p.Name, p.Namespace = name, ns
		return p
	}
	// Waiting for the informers: the first pods may see an empty cache.
	var got *corev1.Pod
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err = cs.CoreV1().Pods("apps").Create(ctx, newPod("inline", "apps", srcVol), metav1.CreateOptions{})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("creating a pod with an inline sluice volume: %v", err)
	}
	if got.Annotations[contract.InjectedAnnotation] == "" || !hasSidecar(got) {
		t.Fatalf("the stored pod was not converted: annotations %v", got.Annotations)
	}
	for _, v := range got.Spec.Volumes {
		if v.Name == srcVol.Name && v.EmptyDir == nil {
			t.Errorf("volume %s is %+v, want an emptyDir", v.Name, v.VolumeSource)
		}
	}

	untouched, err := cs.CoreV1().Pods("plain").Create(ctx, newPod("plain", "plain", corev1.Volume{Name: "scratch",
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}), metav1.CreateOptions{})
	if err != nil || hasSidecar(untouched) || untouched.Annotations[contract.InjectedAnnotation] != "" {
		t.Fatalf("a pod without sluice volumes was changed (err %v)", err)
	}

	_, err = cs.CoreV1().Pods("apps").Create(ctx, newPod("waits", "apps", claim("data", "pending")), metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "pending") {
		t.Fatalf("a pod on an unbound sluice PVC: %v, want a denial that names the claim", err)
	}
	t.Logf("denied as expected: %v", err)
}

func hasSidecar(p *corev1.Pod) bool {
	for _, c := range append(append([]corev1.Container(nil), p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == contract.SidecarName {
			return true
		}
	}
	return false
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitOK(t *testing.T, url string) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
	}
	t.Fatalf("%s never answered 200", url)
}
