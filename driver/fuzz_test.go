package driver

import (
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/contract"
)

// fuzzRequest is one fuzzed NodeStageVolume or NodePublishVolume request,
// in the fields both have.
type fuzzRequest struct {
	publish          bool
	volumeID, target string // target: the staging path of a stage
	staging          string // a publish's staging path
	capability       *csi.VolumeCapability
	vctx, secrets    map[string]string
}

// fuzzCapability is nil (kind 0), access type mount (1), block (2) or
// neither (3), with access mode mode (any number, known or not).
func fuzzCapability(kind uint8, mode int32, fsType string) *csi.VolumeCapability {
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_Mode(mode)}}
	switch kind % 4 {
	case 0:
		return nil
	case 1:
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}}
	case 2:
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	}
	return c
}

// fuzzContext is a volume context with the attributes present selects
// (bit i: the i-th of source, dataset, subPath, cacheSize, readahead), the
// ephemeral marker (bit 5) and the pod's namespace (bit 6).
func fuzzContext(present uint8, attrs []string, podNS string) map[string]string {
	vctx := map[string]string{}
	for i, k := range []string{contract.AttrSource, contract.AttrDataset, contract.AttrSubPath,
		contract.AttrCacheSize, contract.AttrReadahead} {
		if present&(1<<i) != 0 {
			vctx[k] = attrs[i]
		}
	}
	if present&(1<<5) != 0 {
		vctx[ephemeralKey] = "true"
	}
	if present&(1<<6) != 0 {
		vctx[podNamespaceKey] = podNS
	}
	return vctx
}

// validate runs what the node RPC of r checks before it touches a session
// or a mount, in the order node.go does: the request's fields and
// attributes, then the Dataset's access (dataset volumes) or the secrets
// (source volumes). It returns the cleaned target path and the spec.
func (n *nodeServer) validate(r fuzzRequest) (string, volumeSpec, error) {
	op, pathName := "NodeStageVolume", "staging target path"
	if r.publish {
		op, pathName = "NodePublishVolume", "target path"
	}
	target, spec, err := checkMountRequest(op, r.volumeID, pathName, r.target, r.capability, r.vctx)
	if err != nil {
		return "", spec, err
	}
	ephemeral := r.vctx[ephemeralKey] == "true"
	switch {
	case r.publish && !ephemeral && r.staging == "":
		return "", spec, invalidArg("NodePublishVolume: staging target path missing (the volume must be staged first)")
	case spec.Dataset == "" && (!r.publish || ephemeral):
		_, err = parseSecrets(r.secrets)
	case spec.Dataset == "":
	case r.publish:
		_, err = n.authorizeDataset(context.Background(), &spec, r.vctx, ephemeral)
	default:
		_, err = n.stageDataset(context.Background(), &spec)
	}
	return target, spec, err
}

// FuzzNodeRequest validates fuzzed NodeStageVolume and NodePublishVolume
// requests — volume id, paths, capability, volume context and secrets —
// against Datasets in a fake API (nothing is mounted). Refusals must be
// gRPC codes that blame the request (InvalidArgument, NotFound,
// FailedPrecondition, PermissionDenied: never Internal or Unknown) with a
// message, and secret values must not change the message. An accepted
// request must have an absolute clean path, a mount capability (read-only
// unless inline), attributes that its spec reproduces, and a pod allowed
// to read its Dataset. The seed corpus is testdata/fuzz/FuzzNodeRequest
// plus the cases below.
func FuzzNodeRequest(f *testing.F) {
	ro := int32(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
	f.Add(false, "v", "/var/lib/kubelet/staging/v", "", uint8(1), ro, "", uint8(0b0011101), "s3://bkt/p", "", "/a/", "1Gi", "4", "", "AK", "SK")
	f.Add(true, "v", "/pods/x/vol", "/staging/v", uint8(1), ro, "ext4", uint8(0b1000010), "", "ml/imagenet", "", "", "", "team", "", "")
	f.Add(true, "v", "/pods/x/vol", "", uint8(1), int32(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), "", uint8(0b1100010), "", "open/public", "", "", "", "other", "", "")
	f.Add(false, "v", "/staging/v", "", uint8(1), ro, "", uint8(0b0000010), "", "imagenet", "", "", "", "", "", "")
	f.Add(true, "v", "rel/path", "/staging", uint8(2), ro, "", uint8(0b0000001), "file:///d", "", "", "", "", "", "AK", "")
	f.Add(false, "", "/s", "", uint8(0), int32(99), "", uint8(0), "", "", "", "", "", "", "", "")
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	f.Cleanup(func() { klog.LogToStderr(true) })
	n := &nodeServer{datasets: fakeDatasets(f, nil, testDataset("ml", "imagenet", "w:8080", "team"),
		testDataset("open", "public", "", "*"))}
	f.Fuzz(func(t *testing.T, publish bool, volumeID, target, staging string, kind uint8, mode int32, fsType string,
		present uint8, src, dataset, subPath, cacheSize, readahead, podNS, accessKey, secretKey string) {
		r := fuzzRequest{publish: publish, volumeID: volumeID, target: target, staging: staging,
			capability: fuzzCapability(kind, mode, fsType),
			vctx:       fuzzContext(present, []string{src, dataset, subPath, cacheSize, readahead}, podNS),
			secrets:    map[string]string{secretAccessKeyID: accessKey, secretSecretAccessKey: secretKey, "other": "x"}}
		path, spec, err := n.validate(r)
		if err != nil {
			checkRefusal(t, r, err)
			checkSecretsUnshown(t, n, r, err)
			return
		}
		checkAccepted(t, n, r, path, spec)
	})
}

// checkRefusal fails unless err maps to a code that blames the request,
// with a message.
func checkRefusal(t *testing.T, r fuzzRequest, err error) {
	s := status.Convert(toStatus(err))
	switch s.Code() {
	case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.PermissionDenied:
	default:
		t.Fatalf("%+v refused with code %s: %v", r, s.Code(), err)
	}
	if s.Message() == "" {
		t.Fatalf("%+v refused with code %s and no message", r, s.Code())
	}
}

// checkSecretsUnshown fails when the refusal of r changes with the values
// of its secrets (kept empty or not, so the same check fails or passes).
func checkSecretsUnshown(t *testing.T, n *nodeServer, r fuzzRequest, err error) {
	other := map[string]string{}
	for k, v := range r.secrets {
		if v != "" {
			v = "x"
		}
		other[k] = v
	}
	r.secrets = other
	if _, _, err2 := n.validate(r); err2 == nil || err2.Error() != err.Error() {
		t.Fatalf("the secrets' values change the refusal %q to %v", err, err2)
	}
}

// checkAccepted fails unless an accepted request is well-formed: an
// absolute clean path, a mount capability that is read-only unless the
// volume is inline, a spec whose own volume context parses back to it, and
// for a dataset volume, a pod namespace the Dataset admits.
func checkAccepted(t *testing.T, n *nodeServer, r fuzzRequest, path string, spec volumeSpec) {
	if !filepath.IsAbs(path) || path != filepath.Clean(r.target) {
		t.Fatalf("%+v accepted with path %q", r, path)
	}
	ephemeral := r.vctx[ephemeralKey] == "true"
	mode := r.capability.GetAccessMode().GetMode()
	readOnly := mode == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY || mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	if r.capability.GetMount() == nil || (!readOnly && !ephemeral) {
		t.Fatalf("%+v accepted with capability %v", r, r.capability)
	}
	if again, err := parseVolumeAttrs(spec.context()); err != nil || again != spec {
		t.Fatalf("%+v: spec %+v carries a volume context that parses as %+v, %v", r, spec, again, err)
	}
	if spec.Dataset != "" && r.publish {
		ds, err := n.datasets.get(context.Background(), spec.Dataset)
		if err != nil || !ds.MayRead(r.vctx[podNamespaceKey]) {
			t.Fatalf("%+v: pods of namespace %q may not read Dataset %s (%v)", r, r.vctx[podNamespaceKey], spec.Dataset, err)
		}
	}
}
