package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	mount "k8s.io/mount-utils"

	"github.com/sluice-dev/sluice/driver/state"
)

// fakeLauncher stands in for the serving processes.
type fakeLauncher struct {
	mu        sync.Mutex
	next      int
	live      map[int]bool
	starts    int
	failWith  error
	lastCreds credentials
	lastRec   state.Session // as last started
	health    []healthEntry // what the sessions' stats report
	statsErr  error         // what asking a session's stats returns
	// mounter, when set, records the mount a real child makes at its
	// record's MountDir.
	mounter *mount.FakeMounter
}

var _ launcher = (*fakeLauncher)(nil)

func (l *fakeLauncher) start(_ context.Context, rec *state.Session, creds credentials) error {
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
		return l.mounter.Mount("sluice", rec.MountDir(), "fuse.sluice", nil)
	}
	return nil
}

func (l *fakeLauncher) adopt(*state.Session) credentials {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastCreds
}

func (l *fakeLauncher) alive(rec *state.Session) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live[rec.Pid]
}

func (l *fakeLauncher) stop(_ context.Context, rec *state.Session) error {
	l.kill(rec.Pid)
	if l.mounter != nil { // a child unmounts on SIGTERM
		_ = l.mounter.Unmount(rec.MountDir())
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

func (l *fakeLauncher) stats(context.Context, *state.Session) (sessionStats, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.statsErr != nil {
		return sessionStats{}, l.statsErr
	}
	return sessionStats{BytesServed: 10, OriginBytes: 5, MemoryBytes: 4, DiskBytes: 6, DiskLimit: 100, Health: l.health}, nil
}

// noConns keeps no FUSE connection: every start mounts.
type noConns struct{}

var _ connKeeper = noConns{}

func (noConns) holds(string) bool { return false }
func (noConns) drop(string)       {}

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
	srv, err := newNodeServer("node-1", state, filepath.Join(state, "cache"),
		sessionDeps{launcher: f.l, conns: noConns{}, mounter: f.mounter, unmount: f.mounter.Unmount})
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

// mountsAt returns the devices (bind sources) of the mounts at path.
func (f *nodeFixture) mountsAt(path string) []string {
	var from []string
	for _, mp := range f.mounter.MountPoints {
		if mp.Path == path {
			from = append(from, mp.Device)
		}
	}
	return from
}

var fileCtx = map[string]string{"source": "file:///srv/data"}

func stageReq(id, staging string, ctx map[string]string) *csi.NodeStageVolumeRequest {
	return &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: readerMany, VolumeContext: ctx}
}

// withSecrets sets req's secrets and returns it.
func withSecrets(req *csi.NodeStageVolumeRequest, secrets map[string]string) *csi.NodeStageVolumeRequest {
	req.Secrets = secrets
	return req
}

// stagedNode is a node with volume "v" (fileCtx) staged at dir/staging,
// whose dataset shows a subdirectory "models".
func stagedNode(t *testing.T) (f *nodeFixture, dir, staging string) {
	t.Helper()
	dir = t.TempDir()
	f = newNodeFixture(t, filepath.Join(dir, "state"))
	staging = filepath.Join(dir, "staging")
	if _, err := f.c.NodeStageVolume(context.Background(), stageReq("v", staging, fileCtx)); err != nil {
		t.Fatal(err)
	}
	// With the fake mounter the staging path is a plain directory: give it
	// the subdirectory a real session would show.
	if err := os.MkdirAll(filepath.Join(staging, "models"), 0o755); err != nil {
		t.Fatal(err)
	}
	return f, dir, staging
}

func pubReq(id, target, staging string, vctx map[string]string) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, StagingTargetPath: staging,
		VolumeCapability: readerOne, VolumeContext: vctx}
}

var subCtx = map[string]string{"source": "file:///srv/data", "subPath": "models"}

// publishedNode is stagedNode with subPath models published at
// dir/pods/p1/volume.
func publishedNode(t *testing.T) (f *nodeFixture, staging, target string) {
	t.Helper()
	f, dir, staging := stagedNode(t)
	target = filepath.Join(dir, "pods", "p1", "volume")
	if _, err := f.c.NodePublishVolume(context.Background(), pubReq("v", target, staging, subCtx)); err != nil {
		t.Fatal(err)
	}
	return f, staging, target
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
