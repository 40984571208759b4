package driver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

func TestNodeStageVolume(t *testing.T) {
	secrets := map[string]string{secretAccessKeyID: "AKIDEXAMPLE", secretSecretAccessKey: "wJalrXUtnFEMI/K7MDENG"}
	writer := capability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	stage := func(staging string) *csi.NodeStageVolumeRequest {
		return withSecrets(stageReq("v", staging, fileCtx), secrets)
	}
	// Each row gets its own node; before (if set) is staged there first.
	tests := []struct {
		name       string
		before     func(staging string) *csi.NodeStageVolumeRequest
		req        func(staging string) *csi.NodeStageVolumeRequest
		wantCode   codes.Code
		wantMsg    string
		wantStarts int // sessions started, before's included
	}{
		{"no volume id", nil, func(s string) *csi.NodeStageVolumeRequest { return stageReq("", s, fileCtx) },
			codes.InvalidArgument, "volume id", 0},
		{"no staging path", nil, func(string) *csi.NodeStageVolumeRequest { return stageReq("v", "", fileCtx) },
			codes.InvalidArgument, "staging target path", 0},
		{"relative staging path", nil, func(string) *csi.NodeStageVolumeRequest { return stageReq("v", "rel/dir", fileCtx) },
			codes.InvalidArgument, "not absolute", 0},
		{"no capability", nil, func(s string) *csi.NodeStageVolumeRequest {
			r := stageReq("v", s, fileCtx)
			r.VolumeCapability = nil
			return r
		}, codes.InvalidArgument, "capability", 0},
		{"writer", nil, func(s string) *csi.NodeStageVolumeRequest {
			r := stageReq("v", s, fileCtx)
			r.VolumeCapability = writer
			return r
		}, codes.InvalidArgument, "read-only", 0},
		{"no source", nil, func(s string) *csi.NodeStageVolumeRequest { return stageReq("v", s, map[string]string{}) },
			codes.InvalidArgument, "source", 0},
		{"unknown attribute", nil, func(s string) *csi.NodeStageVolumeRequest {
			return stageReq("v", s, map[string]string{"source": "file:///x", "foo": "1"})
		}, codes.InvalidArgument, "foo", 0},
		{"dataset without namespace", nil, func(s string) *csi.NodeStageVolumeRequest {
			return stageReq("v", s, map[string]string{"dataset": "d"})
		}, codes.InvalidArgument, "namespace/name", 0},
		{"half the secrets", nil, func(s string) *csi.NodeStageVolumeRequest {
			return withSecrets(stageReq("v", s, fileCtx), map[string]string{secretAccessKeyID: "AK"})
		}, codes.InvalidArgument, secretSecretAccessKey, 0},
		{"stage", nil, stage, codes.OK, "", 1},
		{"stage again", stage, stage, codes.OK, "", 1},
		{"other source at the same staging path", stage, func(s string) *csi.NodeStageVolumeRequest {
			return stageReq("w", s, map[string]string{"source": "file:///other"})
		}, codes.AlreadyExists, "in use", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			f := newNodeFixture(t, filepath.Join(dir, "state"))
			staging := filepath.Join(dir, "staging")
			ctx := context.Background()
			if tc.before != nil {
				if _, err := f.c.NodeStageVolume(ctx, tc.before(staging)); err != nil {
					t.Fatal(err)
				}
			}
			req := tc.req(staging)
			_, err := f.c.NodeStageVolume(ctx, req)
			wantCode(t, err, tc.wantCode, tc.wantMsg)
			if f.l.starts != tc.wantStarts || f.l.running() != tc.wantStarts {
				t.Errorf("%d sessions started, %d running; want %d", f.l.starts, f.l.running(), tc.wantStarts)
			}
			if staged := tc.wantStarts > 0; f.mounted(staging) != staged {
				t.Errorf("staging path mounted %v, want %v", f.mounted(staging), staged)
			}
			if tc.wantCode == codes.OK && f.l.lastCreds.AccessKeyID != req.Secrets[secretAccessKeyID] {
				t.Errorf("the serving process got access key %q, want the volume's", f.l.lastCreds.AccessKeyID)
			}
			assertNoSecrets(t, dir, secrets)
		})
	}
}

// TestNodeStageSessions: each staged volume is served by a session mounted
// at its own staging path (the kubelet unstages a volume only when no
// other mount of its device exists, so staged volumes cannot share one
// mount), and the session ends with the volume's last unstage.
func TestNodeStageSessions(t *testing.T) {
	dir := t.TempDir()
	f := newNodeFixture(t, filepath.Join(dir, "state"))
	ctx := context.Background()
	secrets := map[string]string{secretAccessKeyID: "AKIDEXAMPLE", secretSecretAccessKey: "wJalrXUtnFEMI/K7MDENG"}
	staging, staging2, staging3 := filepath.Join(dir, "staging"), filepath.Join(dir, "staging2"), filepath.Join(dir, "staging3")
	steps := []struct {
		req        *csi.NodeStageVolumeRequest
		wantStarts int
	}{
		{withSecrets(stageReq("v", staging, fileCtx), secrets), 1},
		{withSecrets(stageReq("v1", staging, fileCtx), secrets), 1}, // the same volume again changes nothing
		{withSecrets(stageReq("v2", staging2, fileCtx), secrets), 2},
		{stageReq("v3", staging3, fileCtx), 3}, // other (no) credentials
	}
	for _, st := range steps {
		if _, err := f.c.NodeStageVolume(ctx, st.req); err != nil {
			t.Fatal(err)
		}
		if f.l.starts != st.wantStarts || !f.mounted(st.req.GetStagingTargetPath()) {
			t.Fatalf("staging %s at %s: %d starts, mounted %v; want %d starts", st.req.GetVolumeId(),
				st.req.GetStagingTargetPath(), f.l.starts, f.mounted(st.req.GetStagingTargetPath()), st.wantStarts)
		}
	}
	// Unstage is idempotent.
	for _, p := range []string{staging, staging, staging2, staging3} {
		if _, err := f.c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "v", StagingTargetPath: p}); err != nil {
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
	// Paths of a row, below its own directory: volume "v" is staged at
	// staging (stagedNode); target and target2 are two pods' volumes.
	type paths struct{ dir, staging, target, target2 string }
	publishSub := func(p paths) *csi.NodePublishVolumeRequest { return pubReq("v", p.target, p.staging, subCtx) }
	tests := []struct {
		name     string
		before   func(p paths) *csi.NodePublishVolumeRequest // published first, if set
		req      func(p paths) *csi.NodePublishVolumeRequest
		wantCode codes.Code
		wantMsg  string
		// wantFrom is what req's target is bound from afterwards, below
		// the staging path ("": not mounted).
		wantFrom string
	}{
		{"no volume id", nil, func(p paths) *csi.NodePublishVolumeRequest { return pubReq("", p.target, p.staging, fileCtx) },
			codes.InvalidArgument, "volume id", ""},
		{"no target", nil, func(p paths) *csi.NodePublishVolumeRequest { return pubReq("v", "", p.staging, fileCtx) },
			codes.InvalidArgument, "target path", ""},
		{"relative target", nil, func(p paths) *csi.NodePublishVolumeRequest { return pubReq("v", "t", p.staging, fileCtx) },
			codes.InvalidArgument, "not absolute", ""},
		{"no capability", nil, func(p paths) *csi.NodePublishVolumeRequest {
			r := pubReq("v", p.target, p.staging, fileCtx)
			r.VolumeCapability = nil
			return r
		}, codes.InvalidArgument, "capability", ""},
		{"writer", nil, func(p paths) *csi.NodePublishVolumeRequest {
			r := pubReq("v", p.target, p.staging, fileCtx)
			r.VolumeCapability = capability(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
			return r
		}, codes.InvalidArgument, "read-only", ""},
		{"no staging path", nil, func(p paths) *csi.NodePublishVolumeRequest { return pubReq("v", p.target, "", fileCtx) },
			codes.InvalidArgument, "staged first", ""},
		{"not staged", nil, func(p paths) *csi.NodePublishVolumeRequest {
			return pubReq("v", p.target, filepath.Join(p.dir, "elsewhere"), fileCtx)
		}, codes.FailedPrecondition, "not staged", ""},
		{"missing subPath", nil, func(p paths) *csi.NodePublishVolumeRequest {
			return pubReq("v", p.target, p.staging, map[string]string{"source": "file:///srv/data", "subPath": "nope"})
		}, codes.InvalidArgument, `subPath "nope" does not exist`, ""},
		{"publish subPath", nil, publishSub, codes.OK, "", "models"},
		{"publish again", publishSub, publishSub, codes.OK, "", "models"},
		{"same target, other subPath", publishSub, func(p paths) *csi.NodePublishVolumeRequest {
			return pubReq("v", p.target, p.staging, fileCtx)
		}, codes.AlreadyExists, "already published", "models"},
		{"second pod", publishSub, func(p paths) *csi.NodePublishVolumeRequest {
			return pubReq("v", p.target2, p.staging, fileCtx)
		}, codes.OK, "", "."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, dir, staging := stagedNode(t)
			p := paths{dir: dir, staging: staging, target: filepath.Join(dir, "pods", "p1", "volume"),
				target2: filepath.Join(dir, "pods", "p2", "volume")}
			ctx := context.Background()
			if tc.before != nil {
				if _, err := f.c.NodePublishVolume(ctx, tc.before(p)); err != nil {
					t.Fatal(err)
				}
			}
			req := tc.req(p)
			_, err := f.c.NodePublishVolume(ctx, req)
			wantCode(t, err, tc.wantCode, tc.wantMsg)
			var want []string
			switch tc.wantFrom {
			case "":
			case ".":
				// A bind of the staging path itself shows the session's
				// device, as /proc/mounts does (the fake mounter resolves it).
				want = []string{"sluice"}
			default:
				want = []string{filepath.Join(staging, tc.wantFrom)}
			}
			if got := f.mountsAt(req.GetTargetPath()); !slices.Equal(got, want) {
				t.Errorf("target bound from %v, want %v", got, want)
			}
			for _, mp := range f.mounter.MountPoints {
				if mp.Path == req.GetTargetPath() && strings.Join(mp.Opts, ",") != "bind,ro" {
					t.Errorf("target mount options %v, want bind,ro", mp.Opts)
				}
			}
			if f.l.starts != 1 || f.l.running() != 1 {
				t.Errorf("%d sessions started, %d running; want the staged one only", f.l.starts, f.l.running())
			}
		})
	}
}

func TestNodeGetVolumeStats(t *testing.T) {
	tests := []struct {
		name     string
		req      func(staging, target string) *csi.NodeGetVolumeStatsRequest
		wantCode codes.Code
	}{
		{"no id", func(_, target string) *csi.NodeGetVolumeStatsRequest {
			return &csi.NodeGetVolumeStatsRequest{VolumePath: target}
		}, codes.InvalidArgument},
		{"no path", func(_, _ string) *csi.NodeGetVolumeStatsRequest {
			return &csi.NodeGetVolumeStatsRequest{VolumeId: "v"}
		}, codes.InvalidArgument},
		{"unknown path", func(_, _ string) *csi.NodeGetVolumeStatsRequest {
			return &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: "/some/path"}
		}, codes.NotFound},
		{"other volume", func(_, target string) *csi.NodeGetVolumeStatsRequest {
			return &csi.NodeGetVolumeStatsRequest{VolumeId: "w", VolumePath: target}
		}, codes.NotFound},
		{"target path", func(_, target string) *csi.NodeGetVolumeStatsRequest {
			return &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: target}
		}, codes.OK},
		{"staging path", func(staging, _ string) *csi.NodeGetVolumeStatsRequest {
			return &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: staging}
		}, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, staging, target := publishedNode(t)
			st, err := f.c.NodeGetVolumeStats(context.Background(), tc.req(staging, target))
			wantCode(t, err, tc.wantCode, "")
			if tc.wantCode != codes.OK {
				return
			}
			// The fake session has 4 bytes in memory and 6 on a disk of 100.
			u := st.GetUsage()
			if len(u) != 1 || u[0].GetUsed() != 10 || u[0].GetTotal() != 100 || u[0].GetAvailable() != 94 {
				t.Errorf("usage %v; want used 10, total 100, available 94", u)
			}
		})
	}
}

func TestNodeUnpublishVolume(t *testing.T) {
	f, _, target := publishedNode(t)
	ctx := context.Background()
	// Unpublish removes the mount and the directory, idempotently.
	for i := 0; i < 2; i++ {
		if _, err := f.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: target}); err != nil {
			t.Fatal(err)
		}
		if f.mounted(target) {
			t.Fatalf("unpublish %d: target still mounted", i+1)
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
