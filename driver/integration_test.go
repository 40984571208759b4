package driver

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// realNode is a `sluice csi --mode node` over real mounts, and an S3
// origin behind a counting proxy.
type realNode struct {
	dir, state, socket string
	drv                *driverProc
	c                  csi.NodeClient
	proxy              *faultproxy.Proxy
	vctx               map[string]string
	secrets            map[string]string
	want               []byte
}

func newRealNode(t *testing.T) *realNode {
	t.Helper()
	testutil.RequireRootFUSE(t)
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	want := make([]byte, 6<<20+123)
	if _, err := rand.Read(want); err != nil {
		t.Fatal(err)
	}
	srv.Put(t, "data", "models/m.bin", want)
	proxy, err := faultproxy.New(srv.Endpoint, faultproxy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	dir := t.TempDir()
	n := &realNode{dir: dir, state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "csi.sock"), proxy: proxy, want: want,
		vctx:    map[string]string{"source": "s3://data?endpoint=" + proxy.URL() + "&pathStyle=true&region=us-east-1"},
		secrets: map[string]string{secretAccessKeyID: srv.AccessKey, secretSecretAccessKey: srv.SecretKey}}
	n.start(t)
	t.Cleanup(func() { n.cleanup(t) })
	return n
}

func (n *realNode) start(t *testing.T) {
	n.drv = startDriver(t, n.socket, "--mode", "node", "--node-id", "n1", "--state-dir", n.state,
		"--cache-dir", filepath.Join(n.dir, "cache"), "--cache-memory", "64Mi")
	n.c = csi.NewNodeClient(dial(t, n.socket))
}

// cleanup stops whatever a failed test left: serving children and mounts.
func (n *realNode) cleanup(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(n.state, "sessions", "*", "session.json"))
	for _, f := range files {
		var rec sessionRecord
		if readJSON(f, &rec) == nil && rec.Pid > 0 {
			_ = syscall.Kill(rec.Pid, syscall.SIGKILL)
		}
	}
	for _, m := range mountsUnder(t, n.dir) {
		_ = mountutil.Unmount(m)
	}
}

func (n *realNode) stage(t *testing.T, staging string) {
	t.Helper()
	if _, err := n.c.NodeStageVolume(withTimeout(t, time.Minute), &csi.NodeStageVolumeRequest{VolumeId: "vol", StagingTargetPath: staging,
		VolumeCapability: readerMany, VolumeContext: n.vctx, Secrets: n.secrets}); err != nil {
		t.Fatal(err)
	}
}

func (n *realNode) publish(t testing.TB, staging, target string, vctx map[string]string) {
	t.Helper()
	if _, err := n.c.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: "vol",
		StagingTargetPath: staging, TargetPath: target, VolumeCapability: readerMany, VolumeContext: vctx, Secrets: n.secrets}); err != nil {
		t.Fatal(err)
	}
}

func (n *realNode) unpublish(t *testing.T, target string) {
	t.Helper()
	if _, err := n.c.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
}

func (n *realNode) sessionPid(t *testing.T) int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(n.state, "sessions", "*", "session.json"))
	if len(files) != 1 {
		t.Fatalf("%d sessions, want 1", len(files))
	}
	var rec sessionRecord
	if err := readJSON(files[0], &rec); err != nil {
		t.Fatal(err)
	}
	return rec.Pid
}

// readLoop reads path's file over and over until stop is closed, counting
// reads and errors; firstOK after lastErr measures recovery.
type readLoop struct {
	reads, errs      atomic.Int64
	lastErr, firstOK atomic.Int64 // unix nanos
	wg               sync.WaitGroup
	stop             chan struct{}
}

func startReadLoop(file string, want []byte) *readLoop {
	l := &readLoop{stop: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			got, err := os.ReadFile(file)
			now := time.Now().UnixNano()
			if err != nil || !bytes.Equal(got, want) {
				l.errs.Add(1)
				l.lastErr.Store(now)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if l.lastErr.Load() != 0 && l.firstOK.Load() == 0 {
				l.firstOK.Store(now)
			}
			l.reads.Add(1)
		}
	}()
	return l
}

func (l *readLoop) finish() { close(l.stop); l.wg.Wait() }

func TestNodeRealMounts(t *testing.T) {
	n := newRealNode(t)
	staging := filepath.Join(n.dir, "staging")
	t1, t2 := filepath.Join(n.dir, "pod1", "vol"), filepath.Join(n.dir, "pod2", "vol")
	n.stage(t, staging)
	n.publish(t, staging, t1, n.vctx)
	n.publish(t, staging, t2, n.vctx)

	// Two pods read identical bytes; the origin is read once.
	for _, target := range []string{t1, t2} {
		got, err := os.ReadFile(filepath.Join(target, "models", "m.bin"))
		if err != nil || !bytes.Equal(got, n.want) {
			t.Fatalf("read via %s: err %v, equal %v", target, err, bytes.Equal(got, n.want))
		}
	}
	if origin := n.proxy.BodyBytes(); origin > int64(len(n.want))+1<<20 {
		t.Errorf("origin served %d bytes for two readers of a %d-byte file; want it read once", origin, len(n.want))
	}
	// The targets are read-only.
	if err := os.WriteFile(filepath.Join(t1, "x"), []byte("x"), 0o644); err == nil {
		t.Error("wrote to a published volume")
	}
	// Unpublish one; the other keeps reading.
	n.unpublish(t, t1)
	if _, err := os.Stat(t1); !os.IsNotExist(err) {
		t.Errorf("target %s left behind", t1)
	}
	if got, err := os.ReadFile(filepath.Join(t2, "models", "m.bin")); err != nil || !bytes.Equal(got, n.want) {
		t.Fatalf("second pod after the first unpublished: %v", err)
	}

	// kill -9 the gRPC server while a pod reads: no read error at all, and
	// the restarted server adopts the session.
	pid := n.sessionPid(t)
	loop := startReadLoop(filepath.Join(t2, "models", "m.bin"), n.want)
	time.Sleep(300 * time.Millisecond)
	if err := n.drv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	n.start(t)
	time.Sleep(500 * time.Millisecond)
	loop.finish()
	t.Logf("kill -9 of the gRPC server: %d reads, %d errors", loop.reads.Load(), loop.errs.Load())
	if loop.errs.Load() != 0 || loop.reads.Load() == 0 {
		t.Fatalf("reads during the gRPC server's restart: %d ok, %d errors; want no error", loop.reads.Load(), loop.errs.Load())
	}
	if got := n.sessionPid(t); got != pid {
		t.Fatalf("session pid %d after restart, want the adopted %d", got, pid)
	}

	// kill -9 the serving process: the node serves the session again and
	// re-binds its paths; reads recover within 5 s.
	loop = startReadLoop(filepath.Join(t2, "models", "m.bin"), n.want)
	time.Sleep(200 * time.Millisecond)
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for loop.firstOK.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	loop.finish()
	if loop.firstOK.Load() == 0 && loop.errs.Load() > 0 {
		t.Fatalf("reads did not recover within 10 s of killing the serving process (%d errors)", loop.errs.Load())
	}
	recovery := time.Duration(0)
	if loop.firstOK.Load() != 0 {
		recovery = time.Unix(0, loop.firstOK.Load()).Sub(killed)
	}
	t.Logf("kill -9 of the serving process: %d failed reads, recovered after %v", loop.errs.Load(), recovery)
	if recovery > 5*time.Second {
		t.Errorf("reads recovered after %v, want ≤ 5 s", recovery)
	}

	// Unpublish and unstage leave no mount, directory or process behind.
	pid = n.sessionPid(t)
	n.unpublish(t, t2)
	if _, err := n.c.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: "vol", StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if !waitGone(pid, 5*time.Second) {
		t.Errorf("serving process %d still runs after unstage", pid)
	}
	if m := mountsUnder(t, n.dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	if left, _ := os.ReadDir(filepath.Join(n.state, "sessions")); len(left) > 0 {
		t.Errorf("session state left: %v", left)
	}
}

func TestNodeRealEphemeral(t *testing.T) {
	n := newRealNode(t)
	vctx := map[string]string{"source": n.vctx["source"], "subPath": "models", ephemeralKey: "true"}
	t1, t2 := filepath.Join(n.dir, "pod1", "vol"), filepath.Join(n.dir, "pod2", "vol")
	n.publish(t, "", t1, vctx)
	n.publish(t, "", t2, vctx)
	pid := n.sessionPid(t)
	for _, target := range []string{t1, t2} {
		if got, err := os.ReadFile(filepath.Join(target, "m.bin")); err != nil || !bytes.Equal(got, n.want) {
			t.Fatalf("inline volume at %s: %v", target, err)
		}
	}
	n.unpublish(t, t1)
	if _, err := os.ReadFile(filepath.Join(t2, "m.bin")); err != nil {
		t.Fatalf("second inline volume after the first left: %v", err)
	}
	n.unpublish(t, t2)
	if !waitGone(pid, 5*time.Second) {
		t.Errorf("serving process %d still runs after the last inline volume left", pid)
	}
	if m := mountsUnder(t, n.dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}

func TestNodeRealBadSecrets(t *testing.T) {
	n := newRealNode(t)
	n.secrets = map[string]string{secretAccessKeyID: "wrong", secretSecretAccessKey: "wrong-secret"}
	_, err := n.c.NodeStageVolume(withTimeout(t, time.Minute), &csi.NodeStageVolumeRequest{VolumeId: "vol",
		StagingTargetPath: filepath.Join(n.dir, "staging"), VolumeCapability: readerMany, VolumeContext: n.vctx, Secrets: n.secrets})
	if err == nil {
		t.Fatal("staged with wrong credentials")
	}
	t.Logf("wrong credentials: %v", err)
	if m := mountsUnder(t, n.dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}
