package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/sluice-dev/sluice/internal/contract"
)

// TestRegistration plays the kubelet's plugin watcher against the
// registration socket.
func TestRegistration(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := serveRegistration(ctx, dir, "/var/lib/kubelet/plugins/csi.sluice.dev/csi.sock"); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sluice.dev-reg.sock")
	c := registerapi.NewRegistrationClient(dial(t, sock))
	info, err := c.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetType() != registerapi.CSIPlugin || info.GetName() != contract.DriverName ||
		info.GetEndpoint() != "/var/lib/kubelet/plugins/csi.sluice.dev/csi.sock" || len(info.GetSupportedVersions()) == 0 {
		t.Fatalf("GetInfo = %v", info)
	}
	for _, ok := range []bool{true, false} {
		if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: ok, Error: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	cancel() // stopping removes the socket: the kubelet unregisters the plugin
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("registration socket not removed on stop")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
