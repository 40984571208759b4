package v1alpha1

import (
	"fmt"
	"slices"

	"github.com/sluice-dev/sluice/internal/contract"
)

// MayRead reports whether pods of namespace ns may read the Dataset: its
// own namespace, or one spec.access.namespaces names ("*": all).
func (d *Dataset) MayRead(ns string) bool {
	return ns == d.Namespace || slices.Contains(d.Spec.Access.Namespaces, ns) ||
		slices.Contains(d.Spec.Access.Namespaces, "*")
}

// AllowedNamespaces is the sorted set of namespaces whose pods may read the
// Dataset ("*" included as given).
func (d *Dataset) AllowedNamespaces() []string {
	ns := append([]string{d.Namespace}, d.Spec.Access.Namespaces...)
	slices.Sort(ns)
	return slices.Compact(ns)
}

// WorkersAddress is host:port of the Dataset's cache workers, as its
// status reports it, else its headless Service in clusterDomain.
func (d *Dataset) WorkersAddress(clusterDomain string) string {
	if d.Status.Workers != "" {
		return d.Status.Workers
	}
	return ServiceAddress(d.Namespace, d.Name, clusterDomain)
}

// ServiceAddress is host:port of the headless Service
// <name>-sluice-workers of Dataset namespace/name in clusterDomain.
func ServiceAddress(namespace, name, clusterDomain string) string {
	return fmt.Sprintf("%s%s.%s.svc.%s:%d", name, contract.WorkersServiceSuffix, namespace, clusterDomain, contract.WorkersPort)
}
