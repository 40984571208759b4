package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// TestDemoSmoke runs `sluice-bench demo` at a tiny size: real versitygw, workers
// and mounts; every byte verified; nothing left running or mounted.
func TestDemoSmoke(t *testing.T) {
	testutil.RequireRootFUSE(t)
	bin := testutil.BenchBin(t)
	vgw := s3server.Binary(t)
	work := t.TempDir()
	out, err := exec.Command(bin, "demo", "--sluice", testutil.SluiceBin(t), "--versitygw", vgw, "--files", "3", "--file-size", "3Mi",
		"--clients", "3", "--bandwidth", "1G", "--block-size", "1Mi", "--work-dir", work).CombinedOutput()
	if err != nil {
		t.Fatalf("sluice-bench demo: %v\n%s", err, out)
	}
	for _, want := range []string{"naive   3", "sluice  3", "the origin sent the dataset 1.00 times", "checked against the original data"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), " false") {
		t.Errorf("a read was not verified:\n%s", out)
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), work) {
		t.Errorf("the demo left mounts under %s", work)
	}
}
