package driver

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/sluice-dev/sluice/driver/state"
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

// mountIDOf is the mount ID and device of the mount at path (mountinfo).
func mountIDOf(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return f[0] + " " + f[2]
		}
	}
	t.Fatalf("%s is not mounted", path)
	return ""
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
	recs, _ := state.List(filepath.Join(n.state, "sessions"))
	for _, rec := range recs {
		if rec.Pid > 0 {
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
	recs, err := state.List(filepath.Join(n.state, "sessions"))
	if err != nil || len(recs) != 1 {
		t.Fatalf("%d sessions (%v), want 1", len(recs), err)
	}
	return recs[0].Pid
}

// readLoop reads path's file over and over until stop is closed, counting
// reads and errors; firstOK after lastErr measures recovery.
type readLoop struct {
	reads, errs      atomic.Int64
	lastErr, firstOK atomic.Int64 // unix nanos
	firstErr         atomic.Value // string
	wg               sync.WaitGroup
	stop             chan struct{}
}

func startReadLoop(file string, want []byte) *readLoop {
	return startReadLoopOn(file, want, false)
}

// startReadLoopOn reads with the page cache dropped before each read, so
// every read reaches the FUSE server. held: one descriptor opened before
// the loop starts serves every read (as a pod's open file); else each
// read opens the file anew.
func startReadLoopOn(file string, want []byte, held bool) *readLoop {
	l := &readLoop{stop: make(chan struct{})}
	var hf *os.File
	if held {
		var err error
		if hf, err = os.Open(file); err != nil {
			l.errs.Add(1)
			l.lastErr.Store(time.Now().UnixNano())
			close(l.stop)
			return l
		}
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if hf != nil {
			defer hf.Close()
		}
		got := make([]byte, len(want))
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			f := hf
			var err error
			if f == nil {
				f, err = os.Open(file)
			}
			if err == nil {
				_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
				_, err = f.ReadAt(got, 0)
				if hf == nil {
					f.Close()
				}
			}
			now := time.Now().UnixNano()
			if err != nil || !bytes.Equal(got, want) {
				l.firstErr.CompareAndSwap(nil, fmt.Sprint("at ", time.Now().Format("15:04:05.000"), ": ", err))
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

	// kill -9 the serving process: the node (which took the connection's
	// descriptor back from it after its own restart) starts a child that
	// takes the live connection over. No read fails — neither on a file
	// opened before the kill nor on new opens — and nothing is remounted.
	mountID := mountIDOf(t, t2)
	file := filepath.Join(t2, "models", "m.bin")
	loop = startReadLoopOn(file, n.want, false)
	heldLoop := startReadLoopOn(file, n.want, true)
	time.Sleep(200 * time.Millisecond)
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for n.sessionPid(t) == pid && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	tookOver := time.Since(killed)
	reads := loop.reads.Load() + heldLoop.reads.Load()
	time.Sleep(500 * time.Millisecond)
	loop.finish()
	heldLoop.finish()
	t.Logf("kill -9 of the serving process: taken over within %v; reads: %d by new opens, %d on a held file, %d after the takeover; errors %d, %d",
		tookOver, loop.reads.Load(), heldLoop.reads.Load(), loop.reads.Load()+heldLoop.reads.Load()-reads,
		loop.errs.Load(), heldLoop.errs.Load())
	// The one error the kernel may return: EIO for a request a thread of
	// the killed process took from the queue as it died (doc.go). Every
	// read after the takeover succeeds, and none ever sees ENOTCONN.
	servedAt := killed.Add(tookOver).UnixNano()
	windowOnly := func(l *readLoop) bool {
		e, _ := l.firstErr.Load().(string)
		return l.errs.Load() == 0 || (l.errs.Load() == 1 && l.lastErr.Load() < servedAt && strings.Contains(e, "input/output error"))
	}
	if !windowOnly(loop) || !windowOnly(heldLoop) {
		logs, _ := filepath.Glob(filepath.Join(n.state, "sessions", "*", "serve.log"))
		for _, l := range logs {
			data, _ := os.ReadFile(l)
			t.Logf("%s:\n%s", l, tail(string(data), 3000))
		}
		t.Fatalf("reads across the serving process's kill (at %s) failed: %d (new opens, first %v), %d (held file, first %v)",
			killed.Format("15:04:05.000"), loop.errs.Load(), loop.firstErr.Load(), heldLoop.errs.Load(), heldLoop.firstErr.Load())
	}
	if loop.reads.Load()+heldLoop.reads.Load() == reads || tookOver > 5*time.Second {
		t.Fatalf("no read succeeded after the takeover (%v after the kill)", tookOver)
	}
	if got := mountIDOf(t, t2); got != mountID {
		t.Errorf("the target's mount changed (%s → %s); want the same connection", mountID, got)
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
