// Package testutil holds helpers shared by sluice's tests.
package testutil

import (
	"os"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
)

// RequireRootFUSE skips a test that needs root and /dev/fuse when they are
// missing — except in CI (CI set), where it fails: CI must run these tests.
func RequireRootFUSE(t testing.TB) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "needs root (real FUSE mounts)"
	} else if _, err := os.Stat("/dev/fuse"); err != nil {
		reason = "needs /dev/fuse"
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s; CI must run this test", reason)
	}
	t.Skipf("%s; run as root on a machine with /dev/fuse (make test does)", reason)
}

// CounterValue reads a Prometheus counter (or gauge).
func CounterValue(t testing.TB, c prometheus.Collector) float64 {
	t.Helper()
	return promtestutil.ToFloat64(c)
}
