package driver

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/sluice-dev/sluice/internal/contract"
)

// StorageClass parameters that name the node-stage secret (the same keys
// the standard external-provisioner reads).
const (
	nodeStageSecretName      = k8sPrefix + "node-stage-secret-name"
	nodeStageSecretNamespace = k8sPrefix + "node-stage-secret-namespace"
)

// provisioner turns PVCs of sluice StorageClasses into PVs by calling the
// controller service, so `sluice csi --mode controller --provision` needs
// no csi-provisioner sidecar. It reads no Secret: the PV only references
// the node-stage secret named by the StorageClass.
type provisioner struct {
	cs *controllerServer
}

var _ controller.Provisioner = (*provisioner)(nil)

// accessModes maps a PVC's access modes to CSI capabilities; writers map
// to writer modes, which CreateVolume refuses with the reason.
func accessModes(pvc *v1.PersistentVolumeClaim) []*csi.VolumeCapability {
	var caps []*csi.VolumeCapability
	for _, m := range pvc.Spec.AccessModes {
		mode := csi.VolumeCapability_AccessMode_UNKNOWN
		switch m {
		case v1.ReadOnlyMany:
			mode = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		case v1.ReadWriteOnce:
			mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
		case v1.ReadWriteOncePod:
			mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
		case v1.ReadWriteMany:
			mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		}
		caps = append(caps, &csi.VolumeCapability{
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		})
	}
	return caps
}

// secretRef resolves the node-stage secret of a StorageClass: the
// templates ${pvc.name}, ${pvc.namespace} and ${pv.name} are expanded as
// the external-provisioner does.
func secretRef(params map[string]string, pvc *v1.PersistentVolumeClaim, pvName string) (*v1.SecretReference, error) {
	name, ns := params[nodeStageSecretName], params[nodeStageSecretNamespace]
	if name == "" && ns == "" {
		return nil, nil
	}
	if name == "" || ns == "" {
		return nil, fmt.Errorf("%w: StorageClass needs both %s and %s", errInvalid, nodeStageSecretName, nodeStageSecretNamespace)
	}
	r := strings.NewReplacer("${pvc.name}", pvc.Name, "${pvc.namespace}", pvc.Namespace, "${pv.name}", pvName)
	ref := &v1.SecretReference{Name: r.Replace(name), Namespace: r.Replace(ns)}
	if strings.Contains(ref.Name+ref.Namespace, "${") {
		return nil, fmt.Errorf("%w: unsupported template in the node-stage secret reference", errInvalid)
	}
	return ref, nil
}

func (p *provisioner) Provision(ctx context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	pvc, sc := opts.PVC, opts.StorageClass
	if pvc.Spec.VolumeMode != nil && *pvc.Spec.VolumeMode == v1.PersistentVolumeBlock {
		return nil, controller.ProvisioningFinished, fmt.Errorf("%w: block volumes are not supported", errInvalid)
	}
	if pvc.Spec.DataSource != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("%w: a PVC data source is not supported: sluice volumes are views of a dataset", errInvalid)
	}
	ref, err := secretRef(sc.Parameters, pvc, opts.PVName)
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	params := maps.Clone(sc.Parameters)
	maps.DeleteFunc(params, func(k, _ string) bool { return strings.HasPrefix(k, k8sPrefix) })
	if params == nil {
		params = map[string]string{}
	}
	// What the external-provisioner adds with --extra-create-metadata: a
	// dataset named without namespace is the PVC's namespace's.
	params[pvcNameKey], params[pvcNamespaceKey], params[pvNameKey] = pvc.Name, pvc.Namespace, opts.PVName
	capacity := pvc.Spec.Resources.Requests[v1.ResourceStorage]
	resp, err := p.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: opts.PVName, Parameters: params, VolumeCapabilities: accessModes(pvc),
		CapacityRange: &csi.CapacityRange{RequiredBytes: capacity.Value()},
	})
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	vol := resp.GetVolume()
	reclaim := v1.PersistentVolumeReclaimDelete
	if sc.ReclaimPolicy != nil {
		reclaim = *sc.ReclaimPolicy
	}
	pv := &v1.PersistentVolume{
		Spec: v1.PersistentVolumeSpec{
			AccessModes:                   pvc.Spec.AccessModes,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: capacity},
			PersistentVolumeReclaimPolicy: reclaim,
			MountOptions:                  sc.MountOptions,
			VolumeMode:                    pvc.Spec.VolumeMode,
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver: contract.DriverName, VolumeHandle: vol.GetVolumeId(), ReadOnly: true,
				VolumeAttributes: vol.GetVolumeContext(), NodeStageSecretRef: ref,
			}},
		},
	}
	pv.Name = opts.PVName
	klog.InfoS("Provisioned", "pvc", klog.KObj(pvc), "pv", opts.PVName)
	return pv, controller.ProvisioningFinished, nil
}

func (p *provisioner) Delete(ctx context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != contract.DriverName {
		return &controller.IgnoredError{Reason: "not a " + contract.DriverName + " volume"}
	}
	_, err := p.cs.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle})
	return err
}

// runProvisioner runs the provision controller until ctx is done, with
// leader election in the pod's namespace when running in a cluster.
func runProvisioner(ctx context.Context, cs *controllerServer, kubeconfig string) error {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return fmt.Errorf("--provision needs API access (--kubeconfig or in-cluster): %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	opts := []func(*controller.ProvisionController) error{controller.LeaderElection(kubeconfig == "")}
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		opts = append(opts, controller.LeaderElectionNamespace(ns))
	}
	pc := controller.NewProvisionController(ctx, client, contract.DriverName, &provisioner{cs: cs}, opts...)
	go pc.Run(ctx)
	return nil
}
