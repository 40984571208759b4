// Package v1alpha1 is the sluice.dev/v1alpha1 API: the Dataset resource
// (a dataset in object storage, a local/NFS path or over HTTP, served to
// pods through cache workers). The CRD in deploy/controller and the deepcopy
// functions are generated from these types by controller-gen
// (`make generate`).
//
// +kubebuilder:object:generate=true
// +groupName=sluice.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/sluice-dev/sluice/internal/contract"
)

// GroupVersion returns sluice.dev/v1alpha1 (a function, not a package
// variable: nothing here is mutable).
func GroupVersion() schema.GroupVersion {
	return schema.GroupVersion{Group: contract.Group, Version: contract.Version}
}

// AddToScheme adds the sluice.dev/v1alpha1 types to s.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion(), &Dataset{}, &DatasetList{})
	metav1.AddToGroupVersion(s, GroupVersion())
	return nil
}
