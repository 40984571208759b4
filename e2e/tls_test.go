//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/sluice-dev/sluice/internal/contract"
)

// TestNoTokenOrDataInTheClear captures the pod network (every interface,
// pod addresses only) while a serverless pod reads a Dataset through its
// cache workers and heartbeats to the controller, then looks in the
// capture for a bearer token and for the dataset's bytes. The origin's
// port is left out: that hop is the user's S3 endpoint, plain HTTP on this
// cluster, not one of sluice's.
func TestNoTokenOrDataInTheClear(t *testing.T) {
	e, ns := shared, "e2e-tls"
	tcpdump, err := exec.LookPath("tcpdump")
	if err != nil {
		t.Fatalf("tcpdump (make cluster-packages installs it): %v", err)
	}
	_, originPort, err := net.SplitHostPort(strings.TrimPrefix(e.origin.endpoint, "http://"))
	if err != nil {
		t.Fatalf("origin endpoint %q: %v", e.origin.endpoint, err)
	}
	pcap := filepath.Join(t.TempDir(), "pod-network.pcap")
	cmd := exec.Command(tcpdump, "-i", "any", "-s", "0", "-B", "65536", "-U", "-w", pcap, "net", "10.244.0.0/24", "and", "not", "port", originPort)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Signal(syscall.SIGINT)
			cmd.Wait()
		}
	}
	t.Cleanup(stop)
	listening := make(chan struct{})
	var said []string // tcpdump's stderr: its summary counts dropped packets
	var saidMu sync.Mutex
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			saidMu.Lock()
			said = append(said, sc.Text())
			saidMu.Unlock()
			if strings.Contains(sc.Text(), "listening on") {
				close(listening)
			}
		}
	}()
	select {
	case <-listening:
	case <-time.After(30 * time.Second):
		t.Fatal("tcpdump did not start listening within 30 s")
	}

	e.modelsDataset(t, ns, "tls")
	pod := e.checker("tls-reader", datasetVolume("models", "models"))
	pod.Spec.Tolerations = []corev1.Toleration{{Key: contract.ServerlessTaintKey, Operator: corev1.TolerationOpExists}}
	e.runToCompletion(t, ns, pod, 3*time.Minute)
	stop()

	captured, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	weights := e.files["models/weights.bin"]
	// The pod read every file through the workers: at least that much
	// crossed the pod network (encrypted), or the capture missed it.
	<-stderrDone
	saidMu.Lock()
	summary := strings.Join(said, "; ")
	saidMu.Unlock()
	if len(captured) < len(weights) {
		t.Fatalf("captured %d bytes, fewer than the %d the pod read: the capture missed the pod network (tcpdump: %s)",
			len(captured), len(weights), summary)
	}
	for _, clear := range []string{"Authorization: Bearer", "authorization: bearer", "eyJhbGciOi"} {
		if i := bytes.Index(captured, []byte(clear)); i >= 0 {
			t.Errorf("the capture holds %q in the clear (at byte %d)", clear, i)
		}
	}
	found := 0
	for off := 0; off+32 <= len(weights); off += len(weights) / 256 {
		if bytes.Contains(captured, weights[off:off+32]) {
			found++
		}
	}
	if found > 0 {
		t.Errorf("%d of 256 samples of the dataset's bytes appear in the clear in the capture", found)
	}
	t.Logf("captured %d bytes of pod traffic while the pod read %d bytes: no token and no dataset sample in the clear (tcpdump: %s)",
		len(captured), len(weights), summary)

	// Nor in any log of the pods that took part (the workers, the reader's
	// sidecar, the controller, the webhook, the CSI driver), any event or
	// any Dataset's status.
	leaks, scanned := e.leakedSecrets()
	for _, f := range leaks {
		t.Error(f)
	}
	var worker, sidecar bool
	for _, p := range scanned {
		worker = worker || strings.Contains(p, ns+"_models-sluice-workers-")
		sidecar = sidecar || (strings.Contains(p, ns+"_tls-reader_") && strings.Contains(p, "/"+contract.SidecarName+"/"))
	}
	if !worker || !sidecar {
		t.Errorf("the scan read no worker log (%v) or no sidecar log (%v) of %s: %v", worker, sidecar, ns, scanned)
	}
}
