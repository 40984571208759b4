package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
)

// datasetTimeout bounds one read of a Dataset.
const datasetTimeout = 15 * time.Second

// datasetResolver reads the Datasets (sluice.dev/v1alpha1) that dataset
// volumes name: the controller checks that a volume's Dataset exists, the
// node reads its workers' address and who may read it. One API read per
// call, no informer: a cluster without the Dataset API still serves source
// volumes. Without API access (a nil resolver, or noAPI set) dataset
// volumes fail with FailedPrecondition.
type datasetResolver struct {
	reader client.Reader // the API server; a fake client in unit tests
	noAPI  error         // why there is no reader
}

// restConfig is the API configuration of --kubeconfig, else in-cluster.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return rest.InClusterConfig()
}

// newDatasetResolver builds a resolver from --kubeconfig, else the
// in-cluster configuration. Without --kubeconfig and without a usable
// in-cluster configuration (outside a cluster, or no service-account
// token) it returns a resolver without API access, so that source volumes
// keep working anywhere; a --kubeconfig that does not load is an error.
func newDatasetResolver(kubeconfig string) (*datasetResolver, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil && kubeconfig == "" {
		if errors.Is(err, rest.ErrNotInCluster) {
			err = errors.New("not in a cluster, and no --kubeconfig")
		}
		klog.InfoS("No Kubernetes API access: dataset volumes will fail, source volumes work", "reason", err.Error())
		return &datasetResolver{noAPI: err}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig: %w", err)
	}
	crlog.SetLogger(klog.NewKlogr()) // controller-runtime's client logs through klog
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	// The REST mapper discovers the Dataset API lazily, at the first read.
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("Dataset client: %w", err)
	}
	return &datasetResolver{reader: c}, nil
}

// get reads Dataset ref ("namespace/name"). Errors say what to do: a
// missing Dataset is NotFound; a missing Dataset API, no API access or a
// service account without the right to read Datasets is
// FailedPrecondition; anything else Unavailable (the caller retries).
func (r *datasetResolver) get(ctx context.Context, ref string) (*v1alpha1.Dataset, error) {
	ns, name := contract.SplitDatasetRef(ref)
	if ns == "" {
		return nil, fmt.Errorf("%w: Dataset %q: want namespace/name", errInvalid, ref)
	}
	if r == nil || r.reader == nil {
		reason := errors.New("no Dataset client")
		if r != nil && r.noAPI != nil {
			reason = r.noAPI
		}
		return nil, fmt.Errorf("%w: Dataset %s: the driver has no Kubernetes API access (%w); dataset volumes need it "+
			"to read their Dataset", errPrecondition, ref, reason)
	}
	ctx, cancel := context.WithTimeout(ctx, datasetTimeout)
	defer cancel()
	ds := &v1alpha1.Dataset{}
	err := r.reader.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ds)
	switch {
	case err == nil:
		return ds, nil
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("%w: Dataset %s not found: create it in namespace %q, or give the volume a %q URL instead",
			errNotFound, ref, ns, contract.AttrSource)
	case meta.IsNoMatchError(err):
		return nil, fmt.Errorf("%w: Dataset %s: the Dataset API (%s/%s) is not installed; deploy the sluice controller",
			errPrecondition, ref, contract.Group, contract.Version)
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return nil, fmt.Errorf("%w: Dataset %s: no API access to Datasets (the driver's service account needs get on "+
			"datasets.%s): %w", errPrecondition, ref, contract.Group, err)
	default:
		return nil, fmt.Errorf("%w: reading Dataset %s: %w", errUnavailable, ref, err)
	}
}

// noVolumeNamespace is why a staged volume's Dataset must be qualified: a
// PersistentVolume has no namespace (CreateVolume qualifies the Datasets it
// provisions).
const noVolumeNamespace = "a PersistentVolume has no namespace to complete it with"

// stageDataset resolves the Dataset of a volume being staged and returns
// its workers' address. Staging has no pod: access is checked at publish.
func (n *nodeServer) stageDataset(ctx context.Context, spec *volumeSpec) (string, error) {
	if err := spec.qualify("", noVolumeNamespace); err != nil {
		return "", err
	}
	ds, err := n.datasets.get(ctx, spec.Dataset)
	if err != nil {
		return "", err
	}
	return ds.WorkersAddress(n.clusterDomain), nil
}

// authorizeDataset checks that the pod a dataset volume is published for
// may read its Dataset, and returns the workers' address. The pod's
// namespace comes from the volume context (podInfoOnMount); an inline
// volume's Dataset named without a namespace is in the pod's namespace.
// The node reads through the workers with its own token, which the
// workers trust for every namespace: this check is what keeps pods of
// other namespaces out.
func (n *nodeServer) authorizeDataset(ctx context.Context, spec *volumeSpec, vctx map[string]string, inline bool) (string, error) {
	podNS := vctx[podNamespaceKey]
	if podNS == "" {
		return "", fmt.Errorf("%w: Dataset volume %q: the request names no pod namespace (%s); access to Datasets is "+
			"checked per pod, so the CSIDriver %s needs podInfoOnMount: true", errPrecondition, spec.Dataset,
			podNamespaceKey, contract.DriverName)
	}
	volNS, why := "", noVolumeNamespace
	if inline {
		volNS = podNS
	}
	if err := spec.qualify(volNS, why); err != nil {
		return "", err
	}
	ds, err := n.datasets.get(ctx, spec.Dataset)
	if err != nil {
		return "", err
	}
	if !ds.MayRead(podNS) {
		klog.InfoS("Refused a pod of another namespace", "dataset", spec.Dataset, "podNamespace", podNS,
			"pod", vctx[k8sPrefix+"pod.name"])
		return "", fmt.Errorf("%w: pods of namespace %q may not read Dataset %s: add %q to its spec.access.namespaces",
			errPermission, podNS, spec.Dataset, podNS)
	}
	return ds.WorkersAddress(n.clusterDomain), nil
}
