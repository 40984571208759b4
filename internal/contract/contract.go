// Package contract holds the names that several sluice components share:
// the CSI driver name, the API group, label and annotation keys, volume
// attribute keys and default paths. It is a leaf package: it imports nothing
// of sluice's own, so every component may depend on it.
package contract

const (
	// DriverName is the CSI driver name.
	DriverName = "csi.sluice.dev"
	// Group and Version of the sluice API; Kind of the dataset resource.
	Group       = "sluice.dev"
	Version     = "v1alpha1"
	DatasetKind = "Dataset"

	// Volume attributes (StorageClass parameters, PV volumeAttributes,
	// inline volumeAttributes).
	AttrDataset   = "dataset"
	AttrSource    = "source"
	AttrSubPath   = "subPath"
	AttrCacheSize = "cacheSize"
	AttrReadahead = "readahead"

	// InjectLabel opts a pod in ("true") or out ("false"); on a namespace the
	// value InjectEnabled opts every pod in.
	InjectLabel   = "sluice.dev/inject"
	InjectEnabled = "enabled"
	// InjectedAnnotation marks what the webhook did to a pod.
	InjectedAnnotation = "sluice.dev/injected"

	// Serverless node defaults.
	ServerlessNodeLabelKey   = "type"
	ServerlessNodeLabelValue = "virtual-kubelet"
	ServerlessTaintKey       = "virtual-kubelet.io/provider"

	// FuseResource is the device-plugin resource for /dev/fuse.
	FuseResource = "sluice.dev/fuse"
	// TokenAudience is the audience of projected service-account tokens.
	TokenAudience = "sluice.dev"

	// FSName is the file system name shown in /proc/mounts ("fuse.sluice").
	FSName = "sluice"
)
