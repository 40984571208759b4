package deploy_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

// TestKubectlDryRun renders every kustomization with the real kubectl and
// applies it with --dry-run=client against a real API server (which kubectl
// asks for the kinds' mappings). The cert-manager kinds of deploy/webhook
// are left to clusters that run cert-manager: that directory is rendered
// only.
func TestKubectlDryRun(t *testing.T) {
	kubectl := kubectlBin(t)
	srv := kubeapi.Start(t)
	kc := srv.WriteKubeconfig(t)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(kubectl, append([]string{"--kubeconfig", kc}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// The CRD first, for real, so Dataset manifests map; and the default
	// service account no controller-manager creates here.
	if out, err := run("apply", "-f", "controller/sluice.dev_datasets.yaml"); err != nil {
		t.Fatalf("applying the CRD: %v\n%s", err, out)
	}
	if out, err := run("create", "serviceaccount", "default", "-n", "default"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, dir := range []string{"base", "controller", "webhook", "deviceplugin", "examples"} {
		t.Run(dir, func(t *testing.T) {
			out, err := run("kustomize", dir)
			if err != nil || !strings.Contains(out, "kind:") {
				t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, out)
			}
			if dir == "webhook" {
				return
			}
			mode := "client"
			if dir == "examples" { // in an existing namespace: the server validates too (CRD schema, CEL)
				mode = "server"
			}
			out, err = run("apply", "--dry-run="+mode, "-k", dir)
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=%s -k %s: %v\n%s", mode, dir, err, out)
			}
			t.Logf("%s", strings.TrimSpace(out))
		})
	}
}
