package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/driver/state"
)

// nodeServer is the CSI Node service. NodeStageVolume starts (or joins)
// the FUSE session of the volume's source and binds it at the staging
// path; NodePublishVolume binds the staging path (or its subPath) into the
// target, read-only. Inline volumes join their session in
// NodePublishVolume and leave it with their last NodeUnpublishVolume.
// Dataset volumes are served through the Dataset's cache workers; each
// publish checks that the pod's namespace may read the Dataset.
type nodeServer struct {
	csi.UnimplementedNodeServer
	nodeID   string
	sessions *sessionManager
	// datasets reads the Datasets of dataset volumes (nil: no API access);
	// clusterDomain completes their workers' Service names.
	datasets      *datasetResolver
	clusterDomain string
}

var _ csi.NodeServer = (*nodeServer)(nil)

func (n *nodeServer) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	staging, spec, err := checkMountRequest("NodeStageVolume", req.GetVolumeId(), "staging target path",
		req.GetStagingTargetPath(), req.GetVolumeCapability(), req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	// A dataset session reads through the workers with the node's token
	// and never takes secrets; a source session reads with the volume's.
	var creds credentials
	var workers string
	if spec.Dataset != "" {
		workers, err = n.stageDataset(ctx, &spec)
	} else {
		creds, err = parseSecrets(req.GetSecrets())
	}
	if err != nil {
		return nil, fmt.Errorf("NodeStageVolume %s: %w", req.GetVolumeId(), err)
	}
	// One session per staged volume, mounted at its staging path (see
	// state.Session.MountAt); every pod using the volume binds from it.
	key := sessionKey(spec.sessionSource()+"\x00"+staging, creds)
	if other := n.sessions.keyOfPath(staging); other != "" && other != key {
		return nil, fmt.Errorf("%w: staging path %s is in use by a volume with another source or credentials",
			errAlreadyExists, staging)
	}
	m := n.sessions
	s := m.acquire(key, &spec)
	defer s.release()
	s.rec.MountAt = staging
	if workers != "" {
		s.rec.Workers = workers // for the next start; a serving child keeps its address
	}
	if err := m.ensureServing(ctx, s, creds); err != nil {
		if relErr := m.stopUnlessPinned(ctx, s); relErr != nil {
			klog.ErrorS(relErr, "Releasing a session that failed to serve", "session", key)
		}
		return nil, fmt.Errorf("NodeStageVolume %s: %w", req.GetVolumeId(), err)
	}
	// ensureServing mounted the session at the staging path itself.
	if err := m.setRef(s, state.Ref{Kind: state.RefStage, VolumeID: req.GetVolumeId(), Path: staging}); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("Volume staged", "volumeID", req.GetVolumeId(), "stagingPath", staging, "session", key)
	return &csi.NodeStageVolumeResponse{}, nil
}

func (n *nodeServer) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("NodeUnstageVolume: volume id missing")
	}
	if req.GetStagingTargetPath() == "" {
		return nil, invalidArg("NodeUnstageVolume: staging target path missing")
	}
	staging := filepath.Clean(req.GetStagingTargetPath())
	m := n.sessions
	s, r := m.acquireByPath(staging)
	defer s.release()
	if s == nil || r.Kind != state.RefStage {
		// Not (or no longer) ours: make sure nothing stays mounted there.
		return &csi.NodeUnstageVolumeResponse{}, m.detachIfMounted(staging)
	}
	if err := m.detachIfMounted(staging); err != nil {
		return nil, err
	}
	if err := m.dropRef(s, staging); err != nil {
		return nil, err
	}
	if err := m.stopUnlessPinned(ctx, s); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("Volume unstaged", "volumeID", req.GetVolumeId(), "stagingPath", staging)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (n *nodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target, spec, err := checkMountRequest("NodePublishVolume", req.GetVolumeId(), "target path",
		req.GetTargetPath(), req.GetVolumeCapability(), req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	if req.GetVolumeContext()[ephemeralKey] == "true" {
		return n.publishEphemeral(ctx, req.GetVolumeId(), target, spec, req.GetVolumeContext(), req.GetSecrets())
	}
	if req.GetStagingTargetPath() == "" {
		return nil, invalidArg("NodePublishVolume: staging target path missing (the volume must be staged first)")
	}
	if spec.Dataset != "" {
		if _, err := n.authorizeDataset(ctx, &spec, req.GetVolumeContext(), false); err != nil {
			return nil, fmt.Errorf("NodePublishVolume %s: %w", req.GetVolumeId(), err)
		}
	}
	staging := filepath.Clean(req.GetStagingTargetPath())
	m := n.sessions
	s, r := m.acquireByPath(staging)
	defer s.release()
	if s == nil || r.Kind != state.RefStage {
		return nil, fmt.Errorf("%w: volume %s is not staged at %s", errPrecondition, req.GetVolumeId(), staging)
	}
	// The access check above was for the Dataset the request names: it
	// must be the one staged there (a source volume's request names none).
	if s.rec.Dataset != spec.Dataset {
		return nil, fmt.Errorf("%w: volume %s: the volume staged at %s serves %s, the request names %q",
			errPrecondition, req.GetVolumeId(), staging, s.rec.Origin(), spec.Dataset)
	}
	// Never publish a dead session: serve it again first (after a restart
	// that needs the volume's secrets, this fails until NodeStageVolume).
	if err := m.ensureServing(ctx, s, credentials{}); err != nil {
		return nil, fmt.Errorf("NodePublishVolume %s: %w", req.GetVolumeId(), err)
	}
	want := state.Ref{Kind: state.RefPublish, VolumeID: req.GetVolumeId(), Path: target, SubPath: spec.SubPath, From: staging}
	if err := n.checkTarget(s, want); errors.Is(err, errDone) {
		return &csi.NodePublishVolumeResponse{}, nil
	} else if err != nil {
		return nil, err
	}
	if err := n.bindTarget(filepath.Join(staging, spec.SubPath), target, spec.SubPath); err != nil {
		return nil, err
	}
	if err := m.setRef(s, want); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("Volume published", "volumeID", req.GetVolumeId(), "targetPath", target, "subPath", spec.SubPath)
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishEphemeral joins (or starts) the session of an inline volume and
// binds it at target.
func (n *nodeServer) publishEphemeral(ctx context.Context, volID, target string, spec volumeSpec, vctx, secrets map[string]string) (*csi.NodePublishVolumeResponse, error) {
	var creds credentials
	var workers string
	var err error
	if spec.Dataset != "" {
		workers, err = n.authorizeDataset(ctx, &spec, vctx, true)
	} else {
		creds, err = parseSecrets(secrets)
	}
	if err != nil {
		return nil, fmt.Errorf("NodePublishVolume %s: %w", volID, err)
	}
	m := n.sessions
	key := sessionKey(spec.sessionSource(), creds)
	if other := m.keyOfPath(target); other != "" && other != key {
		return nil, fmt.Errorf("%w: target %s is in use by a volume with another source", errAlreadyExists, target)
	}
	s := m.acquire(key, &spec)
	defer s.release()
	if workers != "" {
		s.rec.Workers = workers // for the next start; a serving child keeps its address
	}
	want := state.Ref{Kind: state.RefEphemeral, VolumeID: volID, Path: target, SubPath: spec.SubPath}
	err = m.ensureServing(ctx, s, creds)
	if err == nil {
		err = n.checkTarget(s, want)
	}
	if err == nil {
		err = n.bindTarget(filepath.Join(s.rec.MountDir(), spec.SubPath), target, spec.SubPath)
	}
	if err == nil {
		err = m.setRef(s, want)
	}
	if err != nil {
		if relErr := m.stopUnlessPinned(ctx, s); relErr != nil {
			klog.ErrorS(relErr, "Releasing a session after a failed publish", "session", key)
		}
		if errors.Is(err, errDone) {
			return &csi.NodePublishVolumeResponse{}, nil
		}
		return nil, fmt.Errorf("NodePublishVolume %s: %w", volID, err)
	}
	klog.V(2).InfoS("Inline volume published", "volumeID", volID, "targetPath", target, "session", key)
	return &csi.NodePublishVolumeResponse{}, nil
}

// errDone tells a publish that the target is already published as asked.
var errDone = errors.New("already published")

// checkTarget returns errDone when target is already published as want,
// and an AlreadyExists error when it is published differently.
func (n *nodeServer) checkTarget(s *session, want state.Ref) error {
	r, ok := s.rec.RefAt(want.Path)
	if !ok {
		return nil
	}
	if r != want {
		return fmt.Errorf("%w: target %s is already published with another staging path or subPath", errAlreadyExists, want.Path)
	}
	if mnt, err := n.sessions.mounted(want.Path); err == nil && mnt {
		return errDone
	}
	return nil
}

// bindTarget creates target and binds from at it, read-only.
func (n *nodeServer) bindTarget(from, target, subPath string) error {
	fi, err := os.Stat(from)
	switch {
	case err != nil && errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: subPath %q does not exist in the dataset", errInvalid, subPath)
	case err != nil:
		return fmt.Errorf("%w: reading the staged volume: %v", errUnavailable, err)
	case !fi.IsDir():
		return fmt.Errorf("%w: subPath %q is not a directory", errInvalid, subPath)
	}
	m := n.sessions
	if err := m.detachIfMounted(target); err != nil {
		return err
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("creating target path: %w", err)
	}
	return m.bind(from, target)
}

func (n *nodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("NodeUnpublishVolume: volume id missing")
	}
	if req.GetTargetPath() == "" {
		return nil, invalidArg("NodeUnpublishVolume: target path missing")
	}
	target := filepath.Clean(req.GetTargetPath())
	m := n.sessions
	s, _ := m.acquireByPath(target)
	defer s.release()
	if err := m.detachIfMounted(target); err != nil {
		return nil, err
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing target path: %w", err)
	}
	if s != nil {
		if err := m.dropRef(s, target); err != nil {
			return nil, err
		}
		if err := m.stopUnlessPinned(ctx, s); err != nil {
			return nil, err
		}
	}
	klog.V(2).InfoS("Volume unpublished", "volumeID", req.GetVolumeId(), "targetPath", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats reports the session's cache as the volume's usage:
// bytes cached (memory and disk) as used, the disk tier's size as total.
// (CSI has no field for bytes served; the session's /metrics has them.)
func (n *nodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("NodeGetVolumeStats: volume id missing")
	}
	if req.GetVolumePath() == "" {
		return nil, invalidArg("NodeGetVolumeStats: volume path missing")
	}
	path := filepath.Clean(req.GetVolumePath())
	m := n.sessions
	// The record is a copy: the child is asked without holding the session.
	rec, ok := m.recordAt(path, req.GetVolumeId())
	if !ok {
		return nil, fmt.Errorf("%w: volume %s is not published or staged at %s", errNotFound, req.GetVolumeId(), path)
	}
	st, err := m.launcher.stats(ctx, &rec)
	if err != nil {
		return nil, err
	}
	klog.V(4).InfoS("Volume stats", "volumeID", req.GetVolumeId(), "bytesServed", st.BytesServed,
		"originBytes", st.OriginBytes, "memoryBytes", st.MemoryBytes, "diskBytes", st.DiskBytes)
	usage := &csi.VolumeUsage{Unit: csi.VolumeUsage_BYTES, Used: st.MemoryBytes + st.DiskBytes}
	if st.DiskLimit > 0 {
		usage.Total = st.DiskLimit
		usage.Available = max(st.DiskLimit-st.DiskBytes, 0)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{usage}}, nil
}

// NodeGetVolumeHealth reports what the serving process's last health probe
// found (health.go); a process that does not answer is INACCESSIBLE.
func (n *nodeServer) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("NodeGetVolumeHealth: volume id missing")
	}
	var rec state.Session
	var ok bool
	for _, p := range []string{req.GetVolumePublishPath(), req.GetStagingTargetPath()} {
		if p != "" && !ok {
			rec, ok = n.sessions.recordAt(filepath.Clean(p), req.GetVolumeId())
		}
	}
	if !ok && req.GetVolumePublishPath() == "" && req.GetStagingTargetPath() == "" {
		rec, ok = n.sessions.recordOfVolume(req.GetVolumeId()) // both paths are optional
	}
	if !ok {
		return nil, fmt.Errorf("%w: volume %s is not published or staged at %q or %q", errNotFound, req.GetVolumeId(),
			req.GetVolumePublishPath(), req.GetStagingTargetPath())
	}
	st, err := n.sessions.launcher.stats(ctx, &rec)
	if err != nil {
		st.Health = []healthEntry{{csi.VolumeHealthErrorType_INACCESSIBLE.String(), "SessionNotResponding",
			fmt.Sprintf("the process serving the volume does not answer: %v", err)}}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: volumeHealth(req.GetVolumeId(), st.Health)}, nil
}

func (n *nodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
	} {
		caps = append(caps, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}},
		})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (n *nodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: n.nodeID}, nil
}

// checkMountRequest validates what NodeStageVolume and NodePublishVolume
// share — a volume id, an absolute path, a reader capability and volume
// attributes — and returns the cleaned path and the parsed attributes.
func checkMountRequest(op, volumeID, pathName, p string, vc *csi.VolumeCapability, attrs map[string]string) (string, volumeSpec, error) {
	switch {
	case volumeID == "":
		return "", volumeSpec{}, invalidArg("%s: volume id missing", op)
	case p == "":
		return "", volumeSpec{}, invalidArg("%s: %s missing", op, pathName)
	case !filepath.IsAbs(p):
		return "", volumeSpec{}, invalidArg("%s: %s %q is not absolute", op, pathName, p)
	case vc == nil:
		return "", volumeSpec{}, invalidArg("%s: volume capability missing", op)
	}
	check := checkCapability
	if attrs[ephemeralKey] == "true" {
		check = checkMountCapability
	}
	if err := check(vc); err != nil {
		return "", volumeSpec{}, fmt.Errorf("%s: %w", op, err)
	}
	spec, err := parseVolumeAttrs(attrs)
	if err != nil {
		return "", volumeSpec{}, fmt.Errorf("%s %s: %w", op, volumeID, err)
	}
	return filepath.Clean(p), spec, nil
}
