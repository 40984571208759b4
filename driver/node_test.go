package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"
)

// fakeLauncher stands in for the serving processes.
type fakeLauncher struct {
	mu        sync.Mutex
	next      int
	live      map[int]bool
	starts    int
	failWith  error
	lastCreds credentials
	lastRec   sessionRecord // as last started
	// mounter, when set, records the mount a real child makes at its
	// record's mountDir.
	mounter *mount.FakeMounter
}

func (l *fakeLauncher) start(_ context.Context, rec *sessionRecord, creds credentials) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failWith != nil {
		return l.failWith
	}
	l.next++
	rec.Pid, rec.StartTime = 1000+l.next, 1
	l.live[rec.Pid] = true
	l.starts++
	l.lastCreds = creds
	l.lastRec = *rec
	if l.mounter != nil {
		return l.mounter.Mount("sluice", rec.mountDir(), "fuse.sluice", nil)
	}
	return nil
}

func (l *fakeLauncher) adopt(*sessionRecord) credentials {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastCreds
}

func (l *fakeLauncher) alive(rec *sessionRecord) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live[rec.Pid]
}

func (l *fakeLauncher) stop(_ context.Context, rec *sessionRecord) error {
	l.kill(rec.Pid)
	if l.mounter != nil { // a child unmounts on SIGTERM
		_ = l.mounter.Unmount(rec.mountDir())
	}
	return nil
}

func (l *fakeLauncher) kill(pid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.live, pid)
}

func (l *fakeLauncher) running() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.live)
}

func (l *fakeLauncher) holds(*sessionRecord) bool { return false }
func (l *fakeLauncher) release(*sessionRecord)    {}

func (l *fakeLauncher) stats(context.Context, *sessionRecord) (sessionStats, error) {
	return sessionStats{BytesServed: 10, OriginBytes: 5, MemoryBytes: 4, DiskBytes: 6, DiskLimit: 100}, nil
}

// nodeFixture is a node service over a fake mounter and launcher.
type nodeFixture struct {
	state   string
	l       *fakeLauncher
	mounter *mount.FakeMounter
	srv     *nodeServer
	c       csi.NodeClient
}

func newNodeFixture(t *testing.T, state string) *nodeFixture {
	t.Helper()
	mounter := mount.NewFakeMounter(nil)
	f := &nodeFixture{state: state, l: &fakeLauncher{live: map[int]bool{}, mounter: mounter}, mounter: mounter}
	srv, err := newNodeServer("node-1", state, filepath.Join(state, "cache"), f.l, f.mounter, f.mounter.Unmount)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	f.c = csi.NewNodeClient(serveInProcess(t, services{identity: &identityServer{}, node: srv}))
	return f
}

func (f *nodeFixture) mounted(path string) bool {
	mnt, _ := f.srv.sessions.mounted(path)
	return mnt
}

var fileCtx = map[string]string{"source": "file:///srv/data"}

func stageReq(id, staging string, ctx map[string]string) *csi.NodeStageVolumeRequest {
	return &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: readerMany, VolumeContext: ctx}
}

func TestNodeStageVolume(t *testing.T) {
	dir := t.TempDir()
	f := newNodeFixture(t, filepath.Join(dir, "state"))
	staging := filepath.Join(dir, "staging")
	secrets := map[string]string{secretAccessKeyID: "AKIDEXAMPLE", secretSecretAccessKey: "wJalrXUtnFEMI/K7MDENG"}
	writer := capability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	tests := []struct {
		name     string
		req      *csi.NodeStageVolumeRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{"no volume id", stageReq("", staging, fileCtx), codes.InvalidArgument, "volume id"},
		{"no staging path", stageReq("v", "", fileCtx), codes.InvalidArgument, "staging target path"},
		{"relative staging path", stageReq("v", "rel/dir", fileCtx), codes.InvalidArgument, "not absolute"},
		{"no capability", &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: staging, VolumeContext: fileCtx},
			codes.InvalidArgument, "capability"},
		{"writer", &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: staging, VolumeContext: fileCtx,
			VolumeCapability: writer}, codes.InvalidArgument, "read-only"},
		{"no source", stageReq("v", staging, map[string]string{}), codes.InvalidArgument, "source"},
		{"unknown attribute", stageReq("v", staging, map[string]string{"source": "file:///x", "foo": "1"}), codes.InvalidArgument, "foo"},
		{"dataset without namespace", stageReq("v", staging, map[string]string{"dataset": "d"}), codes.InvalidArgument, "namespace/name"},
		{"half the secrets", &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: staging, VolumeCapability: readerMany,
			VolumeContext: fileCtx, Secrets: map[string]string{secretAccessKeyID: "AK"}}, codes.InvalidArgument, secretSecretAccessKey},
		{"stage", &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: staging, VolumeCapability: readerMany,
			VolumeContext: fileCtx, Secrets: secrets}, codes.OK, ""},
		{"stage again", &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: staging, VolumeCapability: readerMany,
			VolumeContext: fileCtx, Secrets: secrets}, codes.OK, ""},
		{"other source at the same staging path", stageReq("w", staging, map[string]string{"source": "file:///other"}),
			codes.AlreadyExists, "in use"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.c.NodeStageVolume(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode, tc.wantMsg)
		})
	}
	if !f.mounted(staging) || f.l.starts != 1 || f.l.running() != 1 {
		t.Fatalf("after staging: mounted %v, starts %d, running %d", f.mounted(staging), f.l.starts, f.l.running())
	}
	if f.l.lastCreds.AccessKeyID != "AKIDEXAMPLE" {
		t.Error("the serving process did not get the volume's credentials")
	}
	assertNoSecrets(t, dir, secrets)

	// Staging the same volume again changes nothing.
	if _, err := f.c.NodeStageVolume(context.Background(), func() *csi.NodeStageVolumeRequest {
		r := stageReq("v1", staging, fileCtx)
		r.Secrets = secrets
		return r
	}()); err != nil || f.l.starts != 1 {
		t.Fatalf("restaging: %v, %d starts; want no new session", err, f.l.starts)
	}
	// Each staged volume is served by a session mounted at its own staging
	// path: the kubelet unstages a volume only when no other mount of its
	// device exists, so staged volumes cannot share one mount.
	staging2 := filepath.Join(dir, "staging2")
	req := stageReq("v2", staging2, fileCtx)
	req.Secrets = secrets
	if _, err := f.c.NodeStageVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if f.l.starts != 2 || !f.mounted(staging2) {
		t.Errorf("a second staged volume: %d starts, mounted %v; want its own session", f.l.starts, f.mounted(staging2))
	}
	req = stageReq("v3", filepath.Join(dir, "staging3"), fileCtx)
	if _, err := f.c.NodeStageVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if f.l.starts != 3 {
		t.Errorf("a volume with other credentials: %d starts, want 3", f.l.starts)
	}
	// The session ends with its last unstage; unstage is idempotent.
	for _, p := range []string{staging, staging, staging2, filepath.Join(dir, "staging3")} {
		if _, err := f.c.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: "v", StagingTargetPath: p}); err != nil {
			t.Fatal(err)
		}
		if f.mounted(p) {
			t.Errorf("%s still mounted after unstage", p)
		}
	}
	if f.l.running() != 0 {
		t.Errorf("%d serving processes left", f.l.running())
	}
	if left, _ := os.ReadDir(filepath.Join(f.state, "sessions")); len(left) != 0 {
		t.Errorf("session directories left: %v", left)
	}
}

func TestNodeStageLaunchFailure(t *testing.T) {
	dir := t.TempDir()
	f := newNodeFixture(t, filepath.Join(dir, "state"))
	f.l.failWith = errorForCode(uint64(codes.PermissionDenied), "cannot read s3://b: access denied")
	_, err := f.c.NodeStageVolume(context.Background(), stageReq("v", filepath.Join(dir, "s"), fileCtx))
	wantCode(t, err, codes.PermissionDenied, "access denied")
	if left, _ := os.ReadDir(filepath.Join(f.state, "sessions")); len(left) != 0 {
		t.Errorf("a failed stage left session state: %v", left)
	}
}

func TestNodeUnstageAndUnpublishArguments(t *testing.T) {
	f := newNodeFixture(t, t.TempDir())
	ctx := context.Background()
	_, err := f.c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{StagingTargetPath: "/x"})
	wantCode(t, err, codes.InvalidArgument, "volume id")
	_, err = f.c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "v"})
	wantCode(t, err, codes.InvalidArgument, "staging target path")
	_, err = f.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{TargetPath: "/x"})
	wantCode(t, err, codes.InvalidArgument, "volume id")
	_, err = f.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v"})
	wantCode(t, err, codes.InvalidArgument, "target path")
	// Unknown volumes: nothing to do, success.
	if _, err := f.c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "v", StagingTargetPath: "/nonexistent/s"}); err != nil {
		t.Error(err)
	}
	if _, err := f.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: "/nonexistent/t"}); err != nil {
		t.Error(err)
	}
}

func TestNodePublishVolume(t *testing.T) {
	dir := t.TempDir()
	f := newNodeFixture(t, filepath.Join(dir, "state"))
	ctx := context.Background()
	staging := filepath.Join(dir, "staging")
	if _, err := f.c.NodeStageVolume(ctx, stageReq("v", staging, fileCtx)); err != nil {
		t.Fatal(err)
	}
	// With the fake mounter the staging path is a plain directory: give it
	// the subdirectory a real session would show.
	if err := os.MkdirAll(filepath.Join(staging, "models"), 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "pods", "p1", "volume")
	sub := map[string]string{"source": "file:///srv/data", "subPath": "models"}
	pub := func(id, target, staging string, vctx map[string]string) *csi.NodePublishVolumeRequest {
		return &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, StagingTargetPath: staging,
			VolumeCapability: readerOne, VolumeContext: vctx}
	}
	tests := []struct {
		name     string
		req      *csi.NodePublishVolumeRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{"no volume id", pub("", target, staging, fileCtx), codes.InvalidArgument, "volume id"},
		{"no target", pub("v", "", staging, fileCtx), codes.InvalidArgument, "target path"},
		{"relative target", pub("v", "t", staging, fileCtx), codes.InvalidArgument, "not absolute"},
		{"no capability", &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: target, StagingTargetPath: staging,
			VolumeContext: fileCtx}, codes.InvalidArgument, "capability"},
		{"writer", &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: target, StagingTargetPath: staging,
			VolumeContext: fileCtx, VolumeCapability: capability(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)},
			codes.InvalidArgument, "read-only"},
		{"no staging path", pub("v", target, "", fileCtx), codes.InvalidArgument, "staged first"},
		{"not staged", pub("v", target, filepath.Join(dir, "elsewhere"), fileCtx), codes.FailedPrecondition, "not staged"},
		{"missing subPath", pub("v", target, staging, map[string]string{"source": "file:///srv/data", "subPath": "nope"}),
			codes.InvalidArgument, `subPath "nope" does not exist`},
		{"publish subPath", pub("v", target, staging, sub), codes.OK, ""},
		{"publish again", pub("v", target, staging, sub), codes.OK, ""},
		{"same target, other subPath", pub("v", target, staging, fileCtx), codes.AlreadyExists, "already published"},
		{"second pod", pub("v", filepath.Join(dir, "pods", "p2", "volume"), staging, fileCtx), codes.OK, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.c.NodePublishVolume(ctx, tc.req)
			wantCode(t, err, tc.wantCode, tc.wantMsg)
		})
	}
	if !f.mounted(target) {
		t.Fatal("target not mounted")
	}
	var opts []string
	for _, mp := range f.mounter.MountPoints {
		if mp.Path == target {
			opts = mp.Opts
			if mp.Device != filepath.Join(staging, "models") {
				t.Errorf("target bound from %s, want the staging path's subPath", mp.Device)
			}
		}
	}
	if strings.Join(opts, ",") != "bind,ro" {
		t.Errorf("target mount options %v, want bind,ro", opts)
	}

	// Stats: by target or staging path; NotFound elsewhere.
	st, err := f.c.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: target})
	if err != nil || st.GetUsage()[0].GetUsed() != 10 || st.GetUsage()[0].GetTotal() != 100 {
		t.Fatalf("NodeGetVolumeStats = %v, %v", st, err)
	}
	for _, tc := range []struct {
		name     string
		req      *csi.NodeGetVolumeStatsRequest
		wantCode codes.Code
	}{
		{"no id", &csi.NodeGetVolumeStatsRequest{VolumePath: target}, codes.InvalidArgument},
		{"no path", &csi.NodeGetVolumeStatsRequest{VolumeId: "v"}, codes.InvalidArgument},
		{"unknown path", &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: "/some/path"}, codes.NotFound},
		{"other volume", &csi.NodeGetVolumeStatsRequest{VolumeId: "w", VolumePath: target}, codes.NotFound},
		{"staging path", &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: staging}, codes.OK},
	} {
		_, err := f.c.NodeGetVolumeStats(ctx, tc.req)
		if status.Code(err) != tc.wantCode {
			t.Errorf("stats %s: code %v, want %v", tc.name, status.Code(err), tc.wantCode)
		}
	}

	// Unpublish removes the mount and the directory, idempotently.
	for i := 0; i < 2; i++ {
		if _, err := f.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("target %s left behind (%v)", target, err)
	}
	if f.l.running() != 1 {
		t.Error("unpublishing a staged volume stopped its session")
	}
}

func TestNodePublishEphemeral(t *testing.T) {
	dir := t.TempDir()
	f := newNodeFixture(t, filepath.Join(dir, "state"))
	ctx := context.Background()
	secrets := map[string]string{secretAccessKeyID: "AKIDEXAMPLE", secretSecretAccessKey: "ephemeral-secret-value"}
	vctx := map[string]string{"source": "s3://bucket/prefix", ephemeralKey: "true",
		"csi.storage.k8s.io/pod.name": "p", "csi.storage.k8s.io/pod.namespace": "ns"}
	targets := []string{filepath.Join(dir, "p1", "vol"), filepath.Join(dir, "p2", "vol")}
	// The kubelet asks for inline volumes with SINGLE_NODE_WRITER whatever
	// the pod says (found on the e2e cluster); they are mounted read-only.
	kubeletInline := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	for i, target := range append(targets, targets[0]) {
		vc := readerOne
		if i == 1 {
			vc = kubeletInline
		}
		if _, err := f.c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-" + filepath.Base(filepath.Dir(target)),
			TargetPath: target, VolumeCapability: vc, VolumeContext: vctx, Secrets: secrets, Readonly: true}); err != nil {
			t.Fatal(err)
		}
		if !f.mounted(target) {
			t.Fatalf("%s not mounted", target)
		}
	}
	if f.l.starts != 1 || f.l.running() != 1 {
		t.Fatalf("two inline volumes of one dataset: %d starts, %d running; want one shared session", f.l.starts, f.l.running())
	}
	assertNoSecrets(t, dir, secrets)
	for i, target := range targets {
		if _, err := f.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "x", TargetPath: target}); err != nil {
			t.Fatal(err)
		}
		if want := 1 - i; f.l.running() != want {
			t.Errorf("after unpublishing %d of 2 inline volumes: %d sessions running, want %d", i+1, f.l.running(), want)
		}
	}
}

// assertNoSecrets fails if a secret value appears in any file below dir.
func assertNoSecrets(t *testing.T, dir string, secrets map[string]string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		data, _ := os.ReadFile(p)
		for _, v := range secrets {
			if strings.Contains(string(data), v) {
				t.Errorf("secret written to %s", p)
			}
		}
		return nil
	})
}

func TestNodeReconcile(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	f := newNodeFixture(t, state)
	ctx := context.Background()
	secrets := map[string]string{secretAccessKeyID: "AK", secretSecretAccessKey: "SK-secret"}
	public, private := filepath.Join(dir, "s-public"), filepath.Join(dir, "s-private")
	if _, err := f.c.NodeStageVolume(ctx, stageReq("pub", public, fileCtx)); err != nil {
		t.Fatal(err)
	}
	req := stageReq("priv", private, map[string]string{"source": "s3://bucket/x"})
	req.Secrets = secrets
	if _, err := f.c.NodeStageVolume(ctx, req); err != nil {
		t.Fatal(err)
	}

	// A restart while the children live: they are adopted, nothing restarts.
	g := newNodeFixture(t, state)
	g.l, g.srv.sessions.launcher = f.l, f.l
	g.mounter.MountPoints = f.mounter.MountPoints
	if err := g.srv.sessions.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if f.l.starts != 2 {
		t.Fatalf("reconcile restarted live sessions (%d starts)", f.l.starts)
	}

	// A restart after both children died: the public one serves again at
	// once; the private one waits for its secrets.
	f.l.live = map[int]bool{}
	h := newNodeFixture(t, state)
	h.l = &fakeLauncher{live: map[int]bool{}, next: 100, mounter: h.mounter}
	h.srv.sessions.launcher = h.l
	if err := h.srv.sessions.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if h.l.starts != 1 || !h.mounted(public) {
		t.Fatalf("public session: %d starts, staging mounted %v; want served and re-bound", h.l.starts, h.mounted(public))
	}
	if h.mounted(private) {
		t.Error("private session re-bound without its secrets")
	}
	req.VolumeId = "priv"
	if _, err := h.c.NodeStageVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if h.l.starts != 2 || !h.mounted(private) || h.l.lastCreds.SecretAccessKey != "SK-secret" {
		t.Fatalf("private session after NodeStage: %d starts, mounted %v", h.l.starts, h.mounted(private))
	}
	assertNoSecrets(t, dir, secrets)
}

func TestNodePublishDeadSession(t *testing.T) {
	dir := t.TempDir()
	f := newNodeFixture(t, filepath.Join(dir, "state"))
	ctx := context.Background()
	staging := filepath.Join(dir, "staging")
	req := stageReq("v", staging, map[string]string{"source": "s3://bucket/x"})
	req.Secrets = map[string]string{secretAccessKeyID: "AK", secretSecretAccessKey: "SK"}
	if _, err := f.c.NodeStageVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	// A restarted node whose session died and needs its secrets again.
	f.l.live = map[int]bool{}
	g := newNodeFixture(t, f.state)
	if err := g.srv.sessions.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := g.c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: staging,
		TargetPath: filepath.Join(dir, "target"), VolumeCapability: readerOne, VolumeContext: req.VolumeContext})
	wantCode(t, err, codes.FailedPrecondition, "secrets")
	if _, err := g.c.NodeStageVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := g.c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: staging,
		TargetPath: filepath.Join(dir, "target"), VolumeCapability: readerOne, VolumeContext: req.VolumeContext}); err != nil {
		t.Fatal(err)
	}
}
