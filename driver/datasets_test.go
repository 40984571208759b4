package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/driver/state"
	"github.com/sluice-dev/sluice/internal/contract"
)

// testDataset is Dataset ns/name readable by pods of ns and of access.
func testDataset(ns, name, workers string, access ...string) *v1alpha1.Dataset {
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.DatasetSpec{Source: "s3://bucket/" + name, Access: v1alpha1.AccessSpec{Namespaces: access}}}
	ds.Status.Workers = workers
	return ds
}

// fakeDatasets is a resolver over controller-runtime's fake client holding
// objs; funcs, when set, intercept its reads (API errors).
func fakeDatasets(t testing.TB, funcs *interceptor.Funcs, objs ...client.Object) *datasetResolver {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	b := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...)
	if funcs != nil {
		b = b.WithInterceptorFuncs(*funcs)
	}
	return &datasetResolver{reader: b.Build()}
}

// failingGets makes every read fail with err.
func failingGets(err error) *interceptor.Funcs {
	return &interceptor.Funcs{Get: func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
		return err
	}}
}

func TestParseDatasetAttrs(t *testing.T) {
	tests := []struct {
		name    string
		attrs   map[string]string
		wantErr string // "" accepts
		want    volumeSpec
	}{
		{"name only", map[string]string{"dataset": "imagenet"}, "", volumeSpec{Dataset: "imagenet"}},
		{"namespace/name with options", map[string]string{"dataset": "ml/imagenet", "subPath": "/train/", "cacheSize": "2Gi",
			"readahead": "4", "csi.storage.k8s.io/pod.namespace": "ml"}, "",
			volumeSpec{Dataset: "ml/imagenet", SubPath: "train", CacheSize: "2Gi", Readahead: "4"}},
		{"upper-case name", map[string]string{"dataset": "ImageNet"}, `"dataset"="ImageNet"`, volumeSpec{}},
		{"bad namespace", map[string]string{"dataset": "ML_team/imagenet"}, "namespace", volumeSpec{}},
		{"empty namespace", map[string]string{"dataset": "/imagenet"}, "namespace", volumeSpec{}},
		{"bad name", map[string]string{"dataset": "ml/image.net"}, "name", volumeSpec{}},
		{"three parts", map[string]string{"dataset": "a/b/c"}, `"dataset"="a/b/c"`, volumeSpec{}},
		{"empty", map[string]string{"dataset": ""}, `"dataset"=""`, volumeSpec{}},
		{"too long", map[string]string{"dataset": "ml/" + strings.Repeat("a", 64)}, "name", volumeSpec{}},
		{"source and dataset", map[string]string{"dataset": "ml/imagenet", "source": "file:///x"}, "not both", volumeSpec{}},
		{"dataset with a bad subPath", map[string]string{"dataset": "d", "subPath": "../x"}, "subPath", volumeSpec{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseVolumeAttrs(tc.attrs)
			if tc.wantErr != "" {
				wantCode(t, toStatus(err), codes.InvalidArgument, tc.wantErr)
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseVolumeAttrs = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	// The volume context of a dataset volume names the Dataset, not a source.
	ctx := volumeSpec{Dataset: "ml/imagenet", SubPath: "train"}.context()
	if len(ctx) != 2 || ctx["dataset"] != "ml/imagenet" || ctx["subPath"] != "train" {
		t.Errorf("volume context %v", ctx)
	}
	// Source and dataset volumes never share a session.
	if (volumeSpec{Dataset: "ml/x"}).sessionSource() == (volumeSpec{Source: "ml/x"}).sessionSource() {
		t.Error("a dataset and a source with the same text share a session key")
	}
	// A small-files volume is a mount of its own kind: its own session,
	// and its context carries the attribute to the node.
	small := volumeSpec{Source: "s3://b/p", SmallFiles: true}
	if small.sessionSource() == (volumeSpec{Source: "s3://b/p"}).sessionSource() {
		t.Error("a small-files volume shares a session with a default one of the same source")
	}
	if got := small.context()["smallFiles"]; got != "true" {
		t.Errorf("small-files volume context %v", small.context())
	}
}

func TestCreateVolumeDataset(t *testing.T) {
	ds := testDataset("ml", "imagenet", "")
	pvcNS := func(ns string) map[string]string {
		return map[string]string{"dataset": "imagenet", pvcNameKey: "claim", pvcNamespaceKey: ns, pvNameKey: "pvc-1"}
	}
	noMatch := &meta.NoKindMatchError{GroupKind: schema.GroupKind{Group: contract.Group, Kind: contract.DatasetKind}}
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: contract.Group, Resource: "datasets"}, "imagenet",
		errors.New("RBAC: access denied"))
	tests := []struct {
		name     string
		datasets *datasetResolver
		params   map[string]string
		wantCode codes.Code
		wantMsg  string
		wantDS   string
	}{
		{"namespace/name", fakeDatasets(t, nil, ds), map[string]string{"dataset": "ml/imagenet", "subPath": "train"}, codes.OK, "", "ml/imagenet"},
		{"name in the PVC's namespace", fakeDatasets(t, nil, ds), pvcNS("ml"), codes.OK, "", "ml/imagenet"},
		{"name, no PVC namespace", fakeDatasets(t, nil, ds), map[string]string{"dataset": "imagenet"}, codes.InvalidArgument,
			"--extra-create-metadata", ""},
		{"missing Dataset", fakeDatasets(t, nil, ds), pvcNS("other"), codes.NotFound, "Dataset other/imagenet not found", ""},
		{"no resolver", nil, pvcNS("ml"), codes.FailedPrecondition, "no Kubernetes API access", ""},
		{"no API access", &datasetResolver{noAPI: errors.New("not in a cluster")}, pvcNS("ml"), codes.FailedPrecondition,
			"not in a cluster", ""},
		{"Dataset API not installed", fakeDatasets(t, failingGets(noMatch)), pvcNS("ml"), codes.FailedPrecondition,
			"Dataset API (sluice.dev/v1alpha1) is not installed", ""},
		{"forbidden", fakeDatasets(t, failingGets(forbidden)), pvcNS("ml"), codes.FailedPrecondition, "get on datasets.sluice.dev", ""},
		{"API server down", fakeDatasets(t, failingGets(errors.New("connection refused"))), pvcNS("ml"), codes.Unavailable,
			"connection refused", ""},
		{"bad name", fakeDatasets(t, nil, ds), map[string]string{"dataset": "ml/Image_Net"}, codes.InvalidArgument, `"dataset"`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs, err := newControllerServer("")
			if err != nil {
				t.Fatal(err)
			}
			cs.datasets = tc.datasets
			c := csi.NewControllerClient(serveInProcess(t, services{identity: &identityServer{}, controller: cs}))
			resp, err := c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-1",
				VolumeCapabilities: []*csi.VolumeCapability{readerMany}, Parameters: tc.params})
			wantCode(t, err, tc.wantCode, tc.wantMsg)
			if err != nil {
				return
			}
			vctx := resp.GetVolume().GetVolumeContext()
			if vctx["dataset"] != tc.wantDS || vctx["source"] != "" {
				t.Errorf("volume context %v, want dataset %s", vctx, tc.wantDS)
			}
			// The volume is known: ValidateVolumeCapabilities confirms it.
			v, err := c.ValidateVolumeCapabilities(context.Background(), &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: resp.GetVolume().GetVolumeId(), VolumeCapabilities: []*csi.VolumeCapability{readerMany}})
			if err != nil || v.GetConfirmed() == nil {
				t.Errorf("ValidateVolumeCapabilities = %v, %v", v, err)
			}
		})
	}
}

// TestProvisionDataset: sluice's own provisioner passes the PVC's name and
// namespace, so "name" becomes a Dataset of the PVC's namespace.
func TestProvisionDataset(t *testing.T) {
	cs, _ := newControllerServer("")
	cs.datasets = fakeDatasets(t, nil, testDataset("team-a", "imagenet", ""))
	p := &provisioner{cs: cs}
	pv, _, err := p.Provision(context.Background(), controller.ProvisionOptions{
		StorageClass: testClass(map[string]string{"dataset": "imagenet"}), PVName: "pvc-1234", PVC: testPVC(v1.ReadOnlyMany)})
	if err != nil {
		t.Fatal(err)
	}
	if attrs := pv.Spec.CSI.VolumeAttributes; attrs["dataset"] != "team-a/imagenet" || len(attrs) != 1 {
		t.Errorf("PV volumeAttributes %v, want dataset team-a/imagenet only", attrs)
	}
	_, _, err = p.Provision(context.Background(), controller.ProvisionOptions{
		StorageClass: testClass(map[string]string{"dataset": "other/missing"}), PVName: "pvc-5678", PVC: testPVC(v1.ReadOnlyMany)})
	if err == nil || codeOf(err) != codes.NotFound {
		t.Errorf("missing Dataset: %v, want NotFound", err)
	}
}

// TestNodeDatasetVolumes: staging a dataset volume starts a session that
// reads the Dataset's workers and takes no secrets; each publish admits the
// pod only when its namespace may read the Dataset.
func TestNodeDatasetVolumes(t *testing.T) {
	dir := t.TempDir()
	f := newNodeFixture(t, filepath.Join(dir, "state"))
	f.srv.datasets = fakeDatasets(t, nil, testDataset("ml", "imagenet", "", "shared"),
		testDataset("ml", "public", "w.example:8080", "*"))
	f.srv.clusterDomain = "cluster.test"
	ctx := context.Background()
	staging := filepath.Join(dir, "staging")
	vctx := map[string]string{"dataset": "ml/imagenet"}
	secrets := map[string]string{secretAccessKeyID: "AKIDEXAMPLE", secretSecretAccessKey: "dataset-volumes-take-no-secrets"}
	req := stageReq("v", staging, vctx)
	req.Secrets = secrets
	if _, err := f.c.NodeStageVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	rec := f.l.lastRec
	if rec.Dataset != "ml/imagenet" || rec.Workers != "imagenet-sluice-workers.ml.svc.cluster.test:8080" || rec.Source != "" ||
		rec.NeedsCreds || !f.l.lastCreds.empty() {
		t.Fatalf("session %+v (credentials given: %v); want Dataset ml/imagenet at its Service, no credentials", rec, !f.l.lastCreds.empty())
	}
	assertNoSecrets(t, dir, secrets)
	for _, tc := range []struct {
		name     string
		req      *csi.NodeStageVolumeRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{"missing Dataset", stageReq("w", filepath.Join(dir, "s2"), map[string]string{"dataset": "ml/nope"}), codes.NotFound,
			"Dataset ml/nope not found"},
		{"static PV naming no namespace", stageReq("w", filepath.Join(dir, "s2"), map[string]string{"dataset": "imagenet"}),
			codes.InvalidArgument, "namespace/name"},
		{"a source volume at the dataset's staging path", stageReq("w", staging, fileCtx), codes.AlreadyExists, "in use"},
	} {
		t.Run("stage "+tc.name, func(t *testing.T) {
			_, err := f.c.NodeStageVolume(ctx, tc.req)
			wantCode(t, err, tc.wantCode, tc.wantMsg)
		})
	}

	pub := func(target string, vctx map[string]string, podNS string) *csi.NodePublishVolumeRequest {
		c := map[string]string{}
		for k, v := range vctx {
			c[k] = v
		}
		if podNS != "" {
			c[podNamespaceKey], c[k8sPrefix+"pod.name"] = podNS, "p"
		}
		return &csi.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: staging, TargetPath: target,
			VolumeCapability: readerMany, VolumeContext: c}
	}
	target := func(name string) string { return filepath.Join(dir, "pods", name, "vol") }
	for _, tc := range []struct {
		name     string
		req      *csi.NodePublishVolumeRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{"pod of the Dataset's namespace", pub(target("own"), vctx, "ml"), codes.OK, ""},
		{"pod of a namespace in spec.access.namespaces", pub(target("shared"), vctx, "shared"), codes.OK, ""},
		{"pod of another namespace", pub(target("other"), vctx, "other"), codes.PermissionDenied,
			`pods of namespace "other" may not read Dataset ml/imagenet`},
		{"no pod info", pub(target("nopod"), vctx, ""), codes.FailedPrecondition, "podInfoOnMount"},
		{"another Dataset than the staged one", pub(target("x"), map[string]string{"dataset": "ml/public"}, "ml"),
			codes.FailedPrecondition, "serves dataset ml/imagenet"},
		{"a source request on the dataset's staging path", pub(target("x"), fileCtx, "ml"), codes.FailedPrecondition,
			"serves dataset ml/imagenet"},
	} {
		t.Run("publish "+tc.name, func(t *testing.T) {
			_, err := f.c.NodePublishVolume(ctx, tc.req)
			wantCode(t, err, tc.wantCode, tc.wantMsg)
			if _, statErr := os.Stat(tc.req.GetTargetPath()); (tc.wantCode == codes.OK) != f.mounted(tc.req.GetTargetPath()) {
				t.Errorf("target mounted %v (%v), want %v", f.mounted(tc.req.GetTargetPath()), statErr, tc.wantCode == codes.OK)
			}
		})
	}
	if f.l.starts != 1 {
		t.Errorf("%d sessions started, want the staged one only", f.l.starts)
	}

	// A restarted node serves a dead dataset session again at once, with
	// its recorded Dataset and workers: it needs no secrets.
	f.l.live = map[int]bool{}
	g := newNodeFixture(t, f.state)
	if err := g.srv.sessions.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if g.l.starts != 1 || g.l.lastRec.Dataset != "ml/imagenet" || g.l.lastRec.Workers != rec.Workers || !g.mounted(staging) {
		t.Fatalf("after a restart: %d starts, record %+v, staging mounted %v", g.l.starts, g.l.lastRec, g.mounted(staging))
	}
}

// TestNodeDatasetInline: inline dataset volumes are admitted per pod; a
// name without namespace is the pod's namespace's Dataset.
func TestNodeDatasetInline(t *testing.T) {
	dir := t.TempDir()
	f := newNodeFixture(t, filepath.Join(dir, "state"))
	f.srv.datasets = fakeDatasets(t, nil, testDataset("ml", "imagenet", "10.0.0.1:8080", "shared"))
	ctx := context.Background()
	inline := func(target, dataset, podNS string) *csi.NodePublishVolumeRequest {
		vctx := map[string]string{"dataset": dataset, ephemeralKey: "true"}
		if podNS != "" {
			vctx[podNamespaceKey] = podNS
		}
		return &csi.NodePublishVolumeRequest{VolumeId: "csi-" + filepath.Base(target), TargetPath: target,
			VolumeCapability: readerOne, VolumeContext: vctx}
	}
	for _, tc := range []struct {
		name     string
		req      *csi.NodePublishVolumeRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{"name in the pod's namespace", inline(filepath.Join(dir, "p1"), "imagenet", "ml"), codes.OK, ""},
		{"namespace/name from a listed namespace", inline(filepath.Join(dir, "p2"), "ml/imagenet", "shared"), codes.OK, ""},
		{"from another namespace", inline(filepath.Join(dir, "p3"), "ml/imagenet", "other"), codes.PermissionDenied,
			`pods of namespace "other" may not read Dataset ml/imagenet: add "other" to its spec.access.namespaces`},
		{"name, but the pod's namespace has no such Dataset", inline(filepath.Join(dir, "p4"), "imagenet", "other"),
			codes.NotFound, "Dataset other/imagenet not found"},
		{"no pod info", inline(filepath.Join(dir, "p5"), "ml/imagenet", ""), codes.FailedPrecondition, "podInfoOnMount: true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.c.NodePublishVolume(ctx, tc.req)
			wantCode(t, err, tc.wantCode, tc.wantMsg)
			if (tc.wantCode == codes.OK) != f.mounted(tc.req.GetTargetPath()) {
				t.Errorf("target mounted %v, want %v", f.mounted(tc.req.GetTargetPath()), tc.wantCode == codes.OK)
			}
		})
	}
	if f.l.starts != 1 || f.l.running() != 1 || f.l.lastRec.Workers != "10.0.0.1:8080" {
		t.Errorf("%d starts, %d running, workers %q; want one shared session at the Dataset's status.workers",
			f.l.starts, f.l.running(), f.l.lastRec.Workers)
	}
}

// TestServeArgsCarryTheVolumeOptions: a session's serve-session arguments
// carry its volume's cache size, readahead and small-files mode, and only
// those it asked for.
func TestServeArgsCarryTheVolumeOptions(t *testing.T) {
	tests := []struct {
		name string
		rec  state.Session
		want []string
		not  []string
	}{
		{"defaults", state.Session{Source: "s3://b/p"}, []string{"--source", "s3://b/p"}, []string{"--small-files", "--readahead", "--cache-disk"}},
		{"small files", state.Session{Source: "s3://b/p", SmallFiles: true}, []string{"--small-files"}, nil},
		{"readahead and size", state.Session{Source: "s3://b/p", Readahead: "4", CacheSize: "2Gi"}, []string{"--readahead", "4", "--cache-disk", "2Gi"}, []string{"--small-files"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := (&procLauncher{}).serveArgs(&tc.rec, 1, false)
			joined := " " + strings.Join(args, " ") + " "
			for _, w := range tc.want {
				if !strings.Contains(joined, " "+w+" ") {
					t.Errorf("args %q lack %q", args, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(joined, " "+n+" ") {
					t.Errorf("args %q hold %q", args, n)
				}
			}
		})
	}
}
