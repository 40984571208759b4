package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/driver/state"
)

// maxVolumeIDLen is the longest volume id handed out (CSI allows 128
// bytes); longer names get a hashed id.
const maxVolumeIDLen = 128

// controllerServer is the CSI Controller service. A volume is a view of a
// dataset, so creating one allocates nothing: CreateVolume validates the
// parameters and returns a volume whose context carries everything the
// node needs. It remembers the volumes it created (in memory and, with a
// state directory, in one JSON file each) so that a repeated CreateVolume
// is idempotent, a conflicting one is refused, and ValidateVolumeCapabilities
// knows which volumes exist. In a cluster the PersistentVolume objects are
// the lasting record; this memory only has to cover retries.
type controllerServer struct {
	csi.UnimplementedControllerServer
	dir string // "" keeps the records in memory only
	// datasets checks that a dataset volume's Dataset exists (nil: no API
	// access, dataset volumes fail with FailedPrecondition).
	datasets *datasetResolver

	mu   sync.Mutex
	vols map[string]*volumeRecord // by volume id
}

var _ csi.ControllerServer = (*controllerServer)(nil)

// volumeRecord is one created volume. Parameters hold no secrets (CSI
// passes secrets in their own field, which is never stored).
type volumeRecord struct {
	Name          string            `json:"name"`
	ID            string            `json:"id"`
	Parameters    map[string]string `json:"parameters"`
	RequiredBytes int64             `json:"requiredBytes"`
	LimitBytes    int64             `json:"limitBytes"`
	Context       map[string]string `json:"context"`
}

// newControllerServer loads the records under stateDir/controller.
func newControllerServer(stateDir string) (*controllerServer, error) {
	c := &controllerServer{vols: map[string]*volumeRecord{}}
	if stateDir == "" {
		return c, nil
	}
	c.dir = filepath.Join(stateDir, "controller")
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("controller state: %w", err)
	}
	files, err := filepath.Glob(filepath.Join(c.dir, "*.json"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		var r volumeRecord
		if err := state.ReadJSON(f, &r); err != nil {
			klog.ErrorS(err, "Skipping an unreadable volume record", "file", f)
			continue
		}
		c.vols[r.ID] = &r
	}
	return c, nil
}

func volumeIDFor(name string) string {
	if len(name) <= maxVolumeIDLen {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "sluice-" + hex.EncodeToString(sum[:16])
}

func (c *controllerServer) recordFile(id string) string {
	sum := sha256.Sum256([]byte(id))
	return filepath.Join(c.dir, hex.EncodeToString(sum[:16])+".json")
}

func (c *controllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, invalidArg("CreateVolume: name missing")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, fmt.Errorf("CreateVolume: %w", err)
	}
	if req.GetVolumeContentSource() != nil {
		return nil, invalidArg("CreateVolume: a volume content source (snapshot or clone) is not supported: " +
			"sluice volumes are views of a dataset")
	}
	required, limit := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	if required < 0 || limit < 0 || (limit > 0 && required > limit) {
		return nil, invalidArg("CreateVolume: capacity range [%d, %d] is invalid", required, limit)
	}
	spec, err := parseVolumeAttrs(req.GetParameters())
	if err != nil {
		return nil, fmt.Errorf("CreateVolume %s: %w", req.GetName(), err)
	}
	if spec.Dataset != "" {
		// "name" is a Dataset of the PVC's namespace; the volume context
		// carries namespace/name, so the node never has to guess.
		err = spec.qualify(req.GetParameters()[pvcNamespaceKey], fmt.Sprintf("the request has no %s parameter "+
			"(run the external-provisioner with --extra-create-metadata)", pvcNamespaceKey))
		if err == nil {
			_, err = c.datasets.get(ctx, spec.Dataset)
		}
		if err != nil {
			return nil, fmt.Errorf("CreateVolume %s: %w", req.GetName(), err)
		}
	}
	rec := &volumeRecord{
		Name: req.GetName(), ID: volumeIDFor(req.GetName()), Parameters: maps.Clone(req.GetParameters()),
		RequiredBytes: required, LimitBytes: limit, Context: spec.context(),
	}
	if rec.Parameters == nil {
		rec.Parameters = map[string]string{}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.vols[rec.ID]; ok {
		if old.Name != rec.Name || !maps.Equal(old.Parameters, rec.Parameters) ||
			old.RequiredBytes != rec.RequiredBytes || old.LimitBytes != rec.LimitBytes {
			return nil, fmt.Errorf("%w: volume %q exists with other parameters or capacity", errAlreadyExists, req.GetName())
		}
		return &csi.CreateVolumeResponse{Volume: old.volume()}, nil
	}
	if c.dir != "" {
		if err := state.WriteJSON(c.recordFile(rec.ID), rec); err != nil {
			return nil, fmt.Errorf("recording volume %s: %w", rec.ID, err)
		}
	}
	c.vols[rec.ID] = rec
	klog.V(2).InfoS("Volume created", "name", rec.Name, "volumeID", rec.ID, "source", spec.Source, "dataset", spec.Dataset)
	return &csi.CreateVolumeResponse{Volume: rec.volume()}, nil
}

// volume is the CSI view of the record. Capacity is informational: the
// volume is a read-only view whose size is the dataset's.
func (r *volumeRecord) volume() *csi.Volume {
	return &csi.Volume{VolumeId: r.ID, CapacityBytes: r.RequiredBytes, VolumeContext: maps.Clone(r.Context)}
}

// DeleteVolume forgets the volume; the dataset itself is never touched.
func (c *controllerServer) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("DeleteVolume: volume id missing")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dir != "" {
		if err := os.Remove(c.recordFile(req.GetVolumeId())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing the record of volume %s: %w", req.GetVolumeId(), err)
		}
	}
	delete(c.vols, req.GetVolumeId())
	return &csi.DeleteVolumeResponse{}, nil
}

func (c *controllerServer) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("ValidateVolumeCapabilities: volume id missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalidArg("ValidateVolumeCapabilities: volume capabilities missing")
	}
	c.mu.Lock()
	rec, ok := c.vols[req.GetVolumeId()]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: volume %q", errNotFound, req.GetVolumeId())
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if _, err := parseVolumeAttrs(req.GetParameters()); len(req.GetParameters()) > 0 && err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      maps.Clone(rec.Context),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func (c *controllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{
		Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{
			Type: csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		}},
	}}}, nil
}
