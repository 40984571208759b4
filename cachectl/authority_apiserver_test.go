package cachectl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/pki"
)

// testAuthority checks what the controller's CA made for Dataset ds: the
// bundle in every namespace, the workers' certificate (valid for the
// Service and each pod's name, chained to the bundle), workers that serve
// and are probed over TLS, and a heartbeat endpoint that speaks only TLS.
// It returns the heartbeat endpoint with a client that trusts it.
func testAuthority(ctx context.Context, t *testing.T, cl client.Client, ds *v1alpha1.Dataset, hbAddr string) endpoint {
	t.Helper()
	var bundle []byte
	for _, ns := range []string{"ml", "team-b", "sluice-system", "default"} {
		cm := &corev1.ConfigMap{}
		eventually(t, 20*time.Second, "the CA bundle in namespace "+ns, func() bool {
			return cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: contract.CABundleConfigMap}, cm) == nil
		})
		if bundle == nil {
			bundle = []byte(cm.Data[contract.CABundleKey])
		} else if cm.Data[contract.CABundleKey] != string(bundle) {
			t.Errorf("namespace %s has another bundle", ns)
		}
	}
	roots, err := pki.PoolOf(bundle)
	if err != nil {
		t.Fatalf("published bundle: %v", err)
	}
	sec := &corev1.Secret{}
	eventually(t, 20*time.Second, "the workers' TLS Secret", func() bool {
		return cl.Get(ctx, client.ObjectKey{Namespace: "ml", Name: WorkersTLSSecret(ds.Name)}, sec) == nil
	})
	if ref := metav1.GetControllerOf(sec); sec.Type != corev1.SecretTypeTLS || ref == nil || ref.Name != ds.Name {
		t.Errorf("workers' Secret: type %s, controller %v; want kubernetes.io/tls owned by the Dataset", sec.Type, ref)
	}
	certs, err := pki.ParseCerts(sec.Data[corev1.TLSCertKey])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"imagenet-sluice-workers.ml.svc.cluster.local", "imagenet-sluice-workers.ml.svc",
		"imagenet-sluice-workers-0.imagenet-sluice-workers.ml.svc.cluster.local"} {
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("workers' certificate for %s: %v", name, err)
		}
	}
	if _, err := tls.X509KeyPair(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey]); err != nil {
		t.Errorf("workers' key pair: %v", err)
	}
	ca := &corev1.Secret{}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "sluice-system", Name: contract.CASecret}, ca); err != nil || len(ca.Data["ca.key"]) == 0 {
		t.Errorf("CA Secret in the controller's namespace: %v", err)
	}
	if refs := ca.OwnerReferences; len(refs) != 1 || refs[0].Kind != "ClusterRole" || refs[0].Name != "sluice-controller" {
		t.Errorf("CA Secret owners %+v; want the controller's ClusterRole", refs)
	}

	sts := &appsv1.StatefulSet{}
	eventually(t, 20*time.Second, "workers that serve TLS", func() bool {
		if cl.Get(ctx, client.ObjectKey{Namespace: "ml", Name: WorkersName(ds.Name)}, sts) != nil {
			return false
		}
		c := sts.Spec.Template.Spec.Containers[0]
		return slices.Contains(c.Args, "--tls-cert-file="+contract.WorkersTLSDir+"/tls.crt") &&
			c.ReadinessProbe.HTTPGet.Scheme == corev1.URISchemeHTTPS && c.LivenessProbe.HTTPGet.Scheme == corev1.URISchemeHTTPS
	})
	if !slices.ContainsFunc(sts.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
		return v.Secret != nil && v.Secret.SecretName == WorkersTLSSecret(ds.Name)
	}) {
		t.Errorf("worker volumes %+v lack the TLS Secret", sts.Spec.Template.Spec.Volumes)
	}

	trusting := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: roots, ServerName: "sluice-controller.sluice-system.svc"}}}
	var resp *http.Response
	eventually(t, 20*time.Second, "the heartbeat endpoint over TLS", func() bool {
		resp, err = trusting.Get("https://" + hbAddr + "/healthz")
		return err == nil
	})
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("heartbeat endpoint /healthz over TLS: %s", resp.Status)
	}
	if resp, err := http.Get("http://" + hbAddr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("the heartbeat endpoint answered plain HTTP")
		}
	}
	return endpoint{url: "https://" + hbAddr + contract.HeartbeatPath, client: trusting}
}
