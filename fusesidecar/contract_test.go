package fusesidecar_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sluice-dev/sluice/fusesidecar"
	"github.com/sluice-dev/sluice/internal/contract"
)

// TestWebhookArgumentsParse checks the contract between the webhook and
// the sidecar: the arguments and the postStart command of every sidecar in
// the webhook's golden pods parse and validate here.
func TestWebhookArgumentsParse(t *testing.T) {
	files, err := filepath.Glob("../webhook/testdata/*.golden.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no webhook golden files: %v", err)
	}
	seen := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var pod corev1.Pod
		if err := yaml.UnmarshalStrict(data, &pod); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
			if c.Name != contract.SidecarName {
				continue
			}
			seen++
			cmds := [][]string{c.Args}
			if c.Lifecycle != nil && c.Lifecycle.PostStart != nil {
				cmds = append(cmds, c.Lifecycle.PostStart.Exec.Command[1:])
			}
			for _, args := range cmds {
				if args[0] != contract.SidecarSubcommand {
					t.Errorf("%s: sidecar runs %q", f, args[0])
					continue
				}
				o := &fusesidecar.Options{}
				fs := pflag.NewFlagSet("fuse-sidecar", pflag.ContinueOnError)
				o.AddFlags(fs)
				if err := fs.Parse(args[1:]); err != nil {
					t.Errorf("%s: %v", filepath.Base(f), err)
					continue
				}
				if err := o.Validate(); err != nil {
					t.Errorf("%s: %v", filepath.Base(f), err)
				}
				if !o.Check && len(o.Volumes) == 0 {
					t.Errorf("%s: no volumes", filepath.Base(f))
				}
			}
		}
	}
	if seen < 5 {
		t.Fatalf("only %d sidecars in the golden files", seen)
	}
}
