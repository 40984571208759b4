//go:build e2e

// Package e2e runs sluice on the real single-node cluster of `make
// cluster-up` (kube-apiserver, kubelet, containerd): `make e2e`. Paths:
// (1) PVC with a StorageClass, (2) inline CSI volume. The CSI driver runs
// as a host process registered with the kubelet through its plugin
// registration socket; data comes from a real versitygw.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// env is what every test shares.
type env struct {
	out    string // _output/e2e
	cs     *kubernetes.Clientset
	origin *s3server.Server
	files  map[string][]byte
	csi    *driver
}

var shared *env // set once by TestMain, read-only afterwards

func TestMain(m *testing.M) {
	e, stop, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	shared = e
	code := m.Run()
	stop()
	os.Exit(code)
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}

func setup() (*env, func(), error) {
	out := filepath.Join(repoRoot(), "_output", "e2e")
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(out, "kubeconfig"))
	if err != nil {
		return nil, nil, fmt.Errorf("no cluster (run make cluster-up): %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	e := &env{out: out, cs: cs, files: map[string][]byte{
		"models/weights.bin": pattern(9<<20 + 17),
		"models/config.json": []byte(`{"layers": 32}` + "\n"),
		"readme.txt":         []byte("sluice e2e\n"),
	}}
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	vgw := filepath.Join(repoRoot(), "bin", "versitygw")
	if e.origin, err = s3server.Launch(vgw, filepath.Join(out, "origin")); err != nil {
		return nil, nil, err
	}
	stops = append(stops, func() { e.origin.Close() })
	ctx := context.Background()
	if err := e.origin.Client().MakeBucket(ctx, "data", makeBucketOpts()); err != nil && !strings.Contains(err.Error(), "own") {
		stop()
		return nil, nil, err
	}
	for k, v := range e.files {
		if err := putObject(ctx, e.origin, "data", k, v); err != nil {
			stop()
			return nil, nil, err
		}
	}
	if e.csi, err = startCSI(out); err != nil {
		stop()
		return nil, nil, err
	}
	stops = append(stops, e.csi.stop)
	_, err = cs.StorageV1().CSIDrivers().Create(ctx, &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: contract.DriverName},
		Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(false), PodInfoOnMount: ptr.To(true),
			VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent, storagev1.VolumeLifecycleEphemeral}}},
		metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		stop()
		return nil, nil, err
	}
	return e, stop, nil
}

// driver is `sluice csi --mode all` run on the host, registered with the
// kubelet through its plugin registration directory.
type driver struct {
	out, dir string
	log      *os.File
	cmd      *exec.Cmd
}

func startCSI(out string) (*driver, error) {
	d := &driver{out: out, dir: filepath.Join(out, "csi")}
	os.MkdirAll(d.dir, 0o755)
	var err error
	if d.log, err = os.OpenFile(filepath.Join(out, "logs", "sluice-csi.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err != nil {
		return nil, err
	}
	return d, d.start()
}

func (d *driver) start() error {
	sock := filepath.Join(d.dir, "csi.sock")
	os.Remove(sock)
	d.cmd = exec.Command(filepath.Join(repoRoot(), "bin", "sluice"), "csi", "--mode", "all", "--endpoint", "unix://"+sock,
		"--node-id", "sluice-e2e", "--state-dir", filepath.Join(d.dir, "state"), "--cache-dir", filepath.Join(d.dir, "cache"),
		"--registration-dir", filepath.Join(d.out, "kubelet", "root", "plugins_registry"),
		"--provision", "--kubeconfig", filepath.Join(d.out, "kubeconfig"), "-v=2")
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	return d.cmd.Start()
}

// crash kills the driver process (SIGKILL) and starts it again, as a
// restart of the node plugin would; its serving children live on.
func (d *driver) crash() error {
	d.cmd.Process.Kill()
	d.cmd.Wait()
	return d.start()
}

// stop waits until the kubelet has unpublished and unstaged what the
// tests' pods used, then stops the driver and anything it left.
func (d *driver) stop() {
	kubeletDir := filepath.Join(d.out, "kubelet")
	for deadline := time.Now().Add(90 * time.Second); len(mountsUnder(kubeletDir, "fuse.sluice")) > 0 && time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
	}
	if left := mountsUnder(kubeletDir, "fuse.sluice"); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: the kubelet left %d sluice mounts: %v\n", len(left), left)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
	// Sessions outlive the driver by design; the suite's end stops them.
	exec.Command("pkill", "-f", "serve-session.*"+d.dir).Run()
	time.Sleep(500 * time.Millisecond)
	for _, m := range append(mountsUnder(d.dir, ""), mountsUnder(kubeletDir, "fuse.sluice")...) {
		mountutil.Unmount(m)
	}
	d.log.Close()
}

// mountsUnder lists mount points below dir (of file system type fstype,
// when set), deepest first.
func mountsUnder(dir, fstype string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var ms []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[4], dir) {
			continue
		}
		if fstype != "" {
			i := slices.Index(f, "-")
			if i < 0 || i+1 >= len(f) || f[i+1] != fstype {
				continue
			}
		}
		ms = append(ms, f[4])
	}
	slices.Reverse(ms)
	return ms
}

// pattern is n deterministic bytes.
func pattern(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}
