package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	mount "k8s.io/mount-utils"

	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/testutil"
)

// BenchmarkNodePublish measures NodePublishVolume of an already staged
// volume with real bind mounts (target: p99 ≤ 50 ms). Unpublish is not
// timed. Run: go test ./driver -run '^$' -bench NodePublish -benchtime 200x
func BenchmarkNodePublish(b *testing.B) {
	testutil.RequireRootFUSE(b)
	dir := b.TempDir()
	data := filepath.Join(dir, "data")
	mustWrite(b, filepath.Join(data, "sub", "f.bin"), make([]byte, 4096))
	n, err := newNodeServer("bench", filepath.Join(dir, "state"), filepath.Join(dir, "cache"), realDeps(b))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	staging := filepath.Join(dir, "staging")
	vctx := map[string]string{"source": "file://" + data, "subPath": "sub"}
	if _, err := n.NodeStageVolume(ctx, stageReq("v", staging, vctx)); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_, _ = n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "v", StagingTargetPath: staging})
	})
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		target := filepath.Join(dir, "pods", fmt.Sprint(i), "vol")
		start := time.Now()
		if _, err := n.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: staging,
			TargetPath: target, VolumeCapability: readerMany, VolumeContext: vctx}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if _, err := n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: target}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// realDeps serve sessions with real serving processes and mounts.
func realDeps(b *testing.B) sessionDeps {
	keeper := &fdKeeper{}
	l := &procLauncher{binary: sluiceBinary(b), wait: time.Minute, args: []string{"--cache-memory", "16Mi"}, keeper: keeper}
	return sessionDeps{launcher: l, conns: keeper, mounter: mount.NewWithoutSystemd(""), unmount: mountutil.Unmount}
}

// benchNode is a node service with real serving processes and mounts, no
// disk tier, over a dataset holding one 1 MiB f.bin.
func benchNode(b *testing.B) (n *nodeServer, data, staging string) {
	testutil.RequireRootFUSE(b)
	dir := b.TempDir()
	data = filepath.Join(dir, "data")
	mustWrite(b, filepath.Join(data, "f.bin"), make([]byte, 1<<20))
	n, err := newNodeServer("bench", filepath.Join(dir, "state"), "", realDeps(b))
	if err != nil {
		b.Fatal(err)
	}
	return n, data, filepath.Join(dir, "staging")
}

// BenchmarkNodeStageFirstByte measures NodeStageVolume of a new dataset up
// to the first byte read through the staging path.
func BenchmarkNodeStageFirstByte(b *testing.B) {
	n, data, staging := benchNode(b)
	ctx := context.Background()
	buf := make([]byte, 1)
	for i := 0; i < b.N; i++ {
		if _, err := n.NodeStageVolume(ctx, stageReq("v", staging, map[string]string{"source": "file://" + data})); err != nil {
			b.Fatal(err)
		}
		if err := readFirstByte(filepath.Join(staging, "f.bin"), buf); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "v", StagingTargetPath: staging}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkServingProcessTakeover measures, for a staged volume, the time
// from the death of its serving process (SIGKILL, all threads gone) to a
// new open and read through the staging path, when a successor takes the FUSE connection over (started
// here at once; the node's watch, woken by the death, does the same). The
// read waits on the kept connection meanwhile, so it never fails.
// Run: go test ./driver -run '^$' -bench Takeover -benchtime 20x
func BenchmarkServingProcessTakeover(b *testing.B) {
	n, data, staging := benchNode(b)
	ctx := context.Background()
	if _, err := n.NodeStageVolume(ctx, stageReq("v", staging, map[string]string{"source": "file://" + data})); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_, _ = n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "v", StagingTargetPath: staging})
	})
	key := n.sessions.keyOfPath(staging)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := n.sessions.acquire(key, nil)
		pid := s.rec.Pid
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil || !waitThreadsGone(pid, 5*time.Second) {
			b.Fatalf("killing the serving process %d: %v", pid, err)
		}
		b.StartTimer()
		start := time.Now()
		read := make(chan error, 1)
		go func() { read <- readFirstByte(filepath.Join(staging, "f.bin"), make([]byte, 1)) }()
		err := n.sessions.ensureServing(ctx, s, credentials{})
		took := s.rec.Generation
		s.release()
		if err != nil {
			b.Fatal(err)
		}
		if err := <-read; err != nil {
			logs, _ := filepath.Glob(filepath.Join(filepath.Dir(staging), "state", "sessions", "*", "serve.log"))
			for _, l := range logs {
				data, _ := os.ReadFile(l)
				b.Logf("%s:\n%s", l, tail(string(data), 4000))
			}
			b.Fatalf("read across the takeover (%d): %v", i+1, err)
		}
		lat = append(lat, time.Since(start))
		if took != i+2 {
			b.Fatalf("generation %d after %d takeovers: the session was mounted again, not taken over", took, i+1)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
