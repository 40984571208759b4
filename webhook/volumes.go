package webhook

import (
	"context"
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/volattr"
)

// Keys the Kubernetes components add to volume attributes.
const (
	// storageProvisionerAnn names a PVC's provisioner before it binds.
	storageProvisionerAnn     = "volume.kubernetes.io/storage-provisioner"
	betaStorageProvisionerAnn = "volume.beta.kubernetes.io/storage-provisioner"
)

// sluiceVolume is one volume of the pod backed by csi.sluice.dev.
type sluiceVolume struct {
	index  int // in pod.Spec.Volumes
	spec   contract.SidecarVolume
	secret string // Secret in the pod's namespace with the origin credentials
	size   int64  // the dataset's bytes when its Dataset's status knows them, else 0
}

// admissionError is an error that denies the pod: its message says why and
// what to do. Other errors are failures of the webhook itself.
type admissionError struct{ msg string }

func (e *admissionError) Error() string { return e.msg }

func deny(format string, args ...any) error {
	return &admissionError{msg: fmt.Sprintf(format, args...)}
}

// sluiceVolumes finds the pod's volumes backed by csi.sluice.dev: inline
// CSI volumes and PVCs bound to a PV of the driver.
func (d *Defaulter) sluiceVolumes(ctx context.Context, pod *corev1.Pod, ns string) ([]sluiceVolume, error) {
	var out []sluiceVolume
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		var attrs map[string]string
		var secret string
		switch {
		case v.CSI != nil && v.CSI.Driver == contract.DriverName:
			attrs = v.CSI.VolumeAttributes
			if v.CSI.NodePublishSecretRef != nil {
				secret = v.CSI.NodePublishSecretRef.Name
			}
		case v.PersistentVolumeClaim != nil:
			pv, err := d.boundPV(ctx, ns, v.Name, v.PersistentVolumeClaim.ClaimName)
			if err != nil || pv == nil {
				return nil, err
			}
			if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != contract.DriverName {
				continue
			}
			attrs = pv.Spec.CSI.VolumeAttributes
			for _, ref := range []*corev1.SecretReference{pv.Spec.CSI.NodeStageSecretRef, pv.Spec.CSI.NodePublishSecretRef} {
				if ref == nil || secret != "" {
					continue
				}
				if ref.Namespace != "" && ref.Namespace != ns {
					return nil, deny("volume %q: PersistentVolume %s takes its credentials from Secret %s/%s, but a sidecar can "+
						"only read Secrets of the pod's namespace %q; copy the Secret into %q and point the PersistentVolume at it",
						v.Name, pv.Name, ref.Namespace, ref.Name, ns, ns)
				}
				secret = ref.Name
			}
		default:
			continue
		}
		spec, err := d.volumeSpec(v.Name, ns, attrs)
		if err != nil {
			return nil, err
		}
		var size int64
		if spec.Dataset != "" {
			if spec.Workers, size, err = d.datasetWorkers(ctx, v.Name, ns, spec.Dataset); err != nil {
				return nil, err
			}
		}
		if secret != "" && spec.Source == "" {
			secret = "" // a dataset volume never gets origin credentials
		}
		out = append(out, sluiceVolume{index: i, spec: spec, secret: secret, size: size})
	}
	return out, nil
}

// datasetWorkers reads the Dataset a volume names (one API read: no
// informer, so a cluster without the Dataset API still admits other pods)
// and returns its workers' address and its size when a preload measured
// it, denying the pod when the Dataset does not exist or the pod's
// namespace may not read it.
func (d *Defaulter) datasetWorkers(ctx context.Context, volName, podNS, dataset string) (string, int64, error) {
	dsNS, dsName := contract.SplitDatasetRef(dataset)
	ds := &v1alpha1.Dataset{}
	err := d.APIReader.Get(ctx, types.NamespacedName{Namespace: dsNS, Name: dsName}, ds)
	switch {
	case apierrors.IsNotFound(err):
		return "", 0, deny("volume %q: Dataset %s not found: create it in namespace %q, or give the volume a %q URL instead",
			volName, dataset, dsNS, contract.AttrSource)
	case meta.IsNoMatchError(err):
		return "", 0, deny("volume %q: Dataset %s: the Dataset API (%s/%s) is not installed; deploy the sluice controller",
			volName, dataset, contract.Group, contract.Version)
	case err != nil:
		return "", 0, fmt.Errorf("reading Dataset %s: %w", dataset, err)
	case !ds.MayRead(podNS):
		return "", 0, deny("volume %q: pods of namespace %q may not use Dataset %s: add %q to its spec.access.namespaces",
			volName, podNS, dataset, podNS)
	}
	var size int64
	if p := ds.Status.Preload; p != nil {
		size = p.TotalBytes
	}
	return ds.WorkersAddress(d.Config.ClusterDomain), size, nil
}

// boundPV returns the PV of a claim when the claim is ours or someone
// else's and bound; nil when the claim does not exist (the kubelet reports
// that) or is bound to nothing of interest. An unbound claim of sluice's
// provisioner denies the pod.
func (d *Defaulter) boundPV(ctx context.Context, ns, volName, claim string) (*corev1.PersistentVolume, error) {
	pvc := &corev1.PersistentVolumeClaim{}
	found, err := d.get(ctx, types.NamespacedName{Namespace: ns, Name: claim}, pvc)
	if err != nil {
		return nil, fmt.Errorf("reading PersistentVolumeClaim %s/%s: %w", ns, claim, err)
	}
	if !found {
		return nil, nil
	}
	if pvc.Spec.VolumeName == "" {
		ours, err := d.claimIsOurs(ctx, pvc)
		if err != nil || !ours {
			return nil, err
		}
		return nil, deny("volume %q: PersistentVolumeClaim %s/%s of %s is not bound yet, and the sidecar that replaces the "+
			"volume on serverless nodes needs its PersistentVolume to know the dataset. Create the pod once the claim is "+
			"Bound (kubectl wait --for=jsonpath='{.status.phase}'=Bound pvc/%s -n %s); a StorageClass with "+
			"volumeBindingMode WaitForFirstConsumer never binds before a pod is scheduled: use Immediate",
			volName, ns, claim, contract.DriverName, claim, ns)
	}
	pv := &corev1.PersistentVolume{}
	found, err = d.get(ctx, types.NamespacedName{Name: pvc.Spec.VolumeName}, pv)
	if err != nil {
		return nil, fmt.Errorf("reading PersistentVolume %s: %w", pvc.Spec.VolumeName, err)
	}
	if !found {
		return nil, nil
	}
	return pv, nil
}

// claimIsOurs reports whether an unbound claim will be provisioned by
// csi.sluice.dev (its provisioner annotation, else its StorageClass).
func (d *Defaulter) claimIsOurs(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (bool, error) {
	for _, k := range []string{storageProvisionerAnn, betaStorageProvisionerAnn} {
		if p, ok := pvc.Annotations[k]; ok {
			return p == contract.DriverName, nil
		}
	}
	if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName == "" {
		return false, nil
	}
	sc := &storagev1.StorageClass{}
	found, err := d.get(ctx, types.NamespacedName{Name: *pvc.Spec.StorageClassName}, sc)
	if err != nil {
		return false, fmt.Errorf("reading StorageClass %s: %w", *pvc.Spec.StorageClassName, err)
	}
	return found && sc.Provisioner == contract.DriverName, nil
}

// volumeSpec validates a volume's attributes (volattr: the CSI driver's
// rules) and turns them into the sidecar's description of the volume.
func (d *Defaulter) volumeSpec(name, ns string, attrs map[string]string) (contract.SidecarVolume, error) {
	spec := contract.SidecarVolume{Name: name, MountPath: path.Join(contract.SidecarVolumeRoot, name)}
	v, err := volattr.Parse(attrs)
	if err != nil {
		return spec, deny("volume %q: %v", name, err)
	}
	spec.Source, spec.Dataset, spec.SubPath, spec.CacheSize, spec.Readahead = v.Source, v.Dataset, v.SubPath, v.CacheSize, v.Readahead
	spec.SmallFiles = v.SmallFiles
	if spec.Dataset != "" && !strings.Contains(spec.Dataset, "/") {
		spec.Dataset = ns + "/" + spec.Dataset // the pod's namespace
	}
	return spec, nil
}
