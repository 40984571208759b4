//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-dev/sluice/internal/contract"
)

// tool runs a pinned binary (SLUICE_HELM, SLUICE_KUBECTL) on the cluster.
func (e *env) tool(t *testing.T, envVar string, args ...string) string {
	t.Helper()
	bin := os.Getenv(envVar)
	if bin == "" {
		t.Fatalf("%s is not set (make e2e sets it)", envVar)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(e.out, "kubeconfig"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestHelmUpgradeAndUninstall: the release `make deploy` installed is
// upgraded with a changed value, uninstalled and installed again while a
// pod reads an inline volume every 200 ms; no read may fail. Upgrading
// restarts every component (a new -v), the CSI node plugin included;
// uninstalling leaves the CRD and nothing else of sluice's, not even the
// CA the controller made, and unmounts nothing the pod uses.
func TestHelmUpgradeAndUninstall(t *testing.T) {
	e, ns := shared, "e2e-helm"
	e.namespace(t, ns)
	ctx := context.Background()
	script := fmt.Sprintf(`i=0; while true; do echo "%s  /data/models/weights.bin" | sha256sum -c - >/dev/null || exit 1; i=$((i+1)); echo "read $i"; sleep 0.2; done`,
		sha256Hex(e.files["models/weights.bin"]))
	pod := e.startInlineScript(t, ns, "reader", script)
	// reads is the reader's count so far; it fails the test once a read failed.
	lastRead := regexp.MustCompile(`read (\d+)\s*$`)
	reads := func() int {
		t.Helper()
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase == corev1.PodFailed {
			t.Fatalf("a read failed: %s", e.logs(ns, pod.Name))
		}
		m := lastRead.FindStringSubmatch(e.logs(ns, pod.Name))
		if m == nil {
			return 0
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	// readsGoOn waits until the reader has read 10 more times.
	readsGoOn := func(when string) {
		t.Helper()
		from := reads()
		for deadline := time.Now().Add(time.Minute); reads() < from+10; time.Sleep(500 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the reader stopped at %d reads: %s", when, reads(), e.logs(ns, pod.Name))
			}
		}
		t.Logf("%s: the reader goes on (%d reads, none failed)", when, reads())
	}
	readsGoOn("before")

	const chart, release, sys = "deploy/charts/sluice", "sluice", "sluice-system"
	root := repoRoot()
	values := filepath.Join(e.out, "deploy", "values.yaml")
	// The webhook's certificate in the last third of its life: the upgrade
	// makes a new one, and the webhook configuration trusts both CAs.
	oldCert := e.tool(t, "SLUICE_KUBECTL", "-n", sys, "get", "secret", "sluice-webhook-tls", "-o", "jsonpath={.data.tls\\.crt}")
	e.tool(t, "SLUICE_KUBECTL", "-n", sys, "annotate", "secret", "sluice-webhook-tls", "--overwrite", "sluice.dev/not-after=1")
	e.tool(t, "SLUICE_HELM", "upgrade", release, filepath.Join(root, chart), "-n", sys, "-f", values,
		"--set", "logLevel=3", "--wait", "--timeout", "5m")
	if cert := e.tool(t, "SLUICE_KUBECTL", "-n", sys, "get", "secret", "sluice-webhook-tls", "-o", "jsonpath={.data.tls\\.crt}"); cert == oldCert {
		t.Error("helm upgrade kept a webhook certificate past two thirds of its life")
	}
	bundle := e.tool(t, "SLUICE_KUBECTL", "get", "mutatingwebhookconfiguration", "sluice-webhook", "-o",
		"jsonpath={.webhooks[0].clientConfig.caBundle}")
	if pem, err := base64.StdEncoding.DecodeString(bundle); err != nil || strings.Count(string(pem), "BEGIN CERTIFICATE") != 2 {
		t.Errorf("after the rotation the webhook's caBundle holds %d CAs (%v), want the new and the old", strings.Count(string(pem), "BEGIN CERTIFICATE"), err)
	}
	nodeArgs := e.tool(t, "SLUICE_KUBECTL", "-n", sys, "get", "daemonset/sluice-csi-node", "-o",
		"jsonpath={.spec.template.spec.containers[0].args}")
	if !strings.Contains(nodeArgs, "-v=3") {
		t.Fatalf("after helm upgrade --set logLevel=3 the node plugin runs %s", nodeArgs)
	}
	for _, w := range []string{"daemonset/sluice-csi-node", "deployment/sluice-controller", "deployment/sluice-webhook"} {
		e.tool(t, "SLUICE_KUBECTL", "-n", sys, "rollout", "status", w, "--timeout=180s")
	}
	readsGoOn("helm upgrade (every component restarted)")

	manifest := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(manifest, []byte(e.tool(t, "SLUICE_HELM", "get", "manifest", release, "-n", sys)), 0o644); err != nil {
		t.Fatal(err)
	}
	reinstall := func() {
		e.tool(t, "SLUICE_HELM", "upgrade", "--install", release, filepath.Join(root, chart), "-n", sys, "-f", values,
			"--wait", "--timeout", "5m")
	}
	uninstalled := false
	t.Cleanup(func() {
		if uninstalled { // the suite goes on with sluice installed
			reinstall()
		}
	})
	e.tool(t, "SLUICE_HELM", "uninstall", release, "-n", sys, "--wait", "--timeout", "3m")
	uninstalled = true
	if left := strings.TrimSpace(e.tool(t, "SLUICE_KUBECTL", "get", "-f", manifest, "--ignore-not-found", "-o", "name")); left != "" {
		t.Errorf("helm uninstall left objects of the release:\n%s", left)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		left := e.controllerMade(t)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("helm uninstall left what the controller made: %v", left)
		}
	}
	if crd := e.tool(t, "SLUICE_KUBECTL", "get", "crd", "datasets.sluice.dev", "--ignore-not-found", "-o", "name"); crd == "" {
		t.Error("the Dataset CRD went with the release")
	}
	readsGoOn("helm uninstall (no sluice component runs)")

	reinstall()
	uninstalled = false
	readsGoOn("helm install again")
}

// controllerMade lists the CA Secret and the CA bundle ConfigMaps that
// exist.
func (e *env) controllerMade(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	var left []string
	if _, err := e.cs.CoreV1().Secrets("sluice-system").Get(ctx, contract.CASecret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, "secret sluice-system/"+contract.CASecret)
	}
	cms, err := e.cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + contract.CABundleConfigMap})
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range cms.Items {
		left = append(left, "configmap "+cm.Namespace+"/"+cm.Name)
	}
	return left
}
