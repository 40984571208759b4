// Package contract holds the names that several sluice components share:
// the CSI driver name, the API group, label and annotation keys, volume
// attribute keys and default paths. It is a leaf package: it imports nothing
// of sluice's own, so every component may depend on it.
package contract

import (
	"slices"
	"strings"
)

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
	// AttrSmallFiles "true" tunes the volume for datasets of many small
	// files (`sluice mount --small-files`).
	AttrSmallFiles = "smallFiles"

	// InjectLabel opts a pod in ("true") or out ("false"); on a namespace the
	// value InjectEnabled opts every pod in.
	InjectLabel   = "sluice.dev/inject"
	InjectEnabled = "enabled"
	// InjectedAnnotation marks what the webhook did to a pod.
	InjectedAnnotation = "sluice.dev/injected"
	// InjectedLabel carries the same mark as a label (the controller
	// watches only pods that have it).
	InjectedLabel = "sluice.dev/injected"
	// DatasetsAnnotation on a converted pod lists the Datasets it reads
	// through their cache workers ("namespace/name", comma-separated), so
	// the controller can scale the workers for pods that are coming before
	// they heartbeat.
	DatasetsAnnotation = "sluice.dev/datasets"
	// ModeAnnotation on a pod (or ModeLabel on its namespace) chooses how
	// its sluice volumes are served: ModeFUSE (the FUSE sidecar) or
	// ModeCopy (an init container copies the data into an emptyDir; no
	// privileges, no /dev/fuse). The annotation alone opts a pod in.
	ModeAnnotation = "sluice.dev/mode"
	ModeLabel      = "sluice.dev/mode"
	ModeFUSE       = "fuse"
	ModeCopy       = "copy"
	// CopySizeLimitAnnotation caps what copy mode may write into the pod
	// (a quantity; the emptyDir's sizeLimit).
	CopySizeLimitAnnotation = "sluice.dev/copy-size-limit"
	// NativeSidecarAnnotation ("true"/"false") on a pod overrides the
	// webhook's choice between a native sidecar and a postStart hook.
	NativeSidecarAnnotation = "sluice.dev/native-sidecar"
	// Sidecar resource annotations (quantities) on a pod override how the
	// webhook sizes its FUSE sidecar: CPU and memory requests and limits,
	// and each volume's memory tier (--cache-memory), which the sidecar's
	// memory follows unless the memory annotations are set too.
	SidecarCPURequestAnnotation    = "sluice.dev/sidecar-cpu-request"
	SidecarCPULimitAnnotation      = "sluice.dev/sidecar-cpu-limit"
	SidecarMemoryRequestAnnotation = "sluice.dev/sidecar-memory-request"
	SidecarMemoryLimitAnnotation   = "sluice.dev/sidecar-memory-limit"
	CacheMemoryAnnotation          = "sluice.dev/cache-memory"

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

// Names shared by the webhook (which writes them into pods) and the FUSE
// sidecar (which reads them).
const (
	// SidecarName is the name of the FUSE sidecar container.
	SidecarName = "sluice-fuse"
	// SidecarSubcommand is the sluice subcommand the sidecar runs.
	SidecarSubcommand = "fuse-sidecar"
	// SidecarPort serves the sidecar's /readyz, /healthz and /metrics.
	SidecarPort = 9809
	// TokenVolumeName is the projected service-account token volume of the
	// sidecar (audience TokenAudience), mounted at TokenDir.
	TokenVolumeName = "sluice-token"
	TokenDir        = "/var/run/secrets/sluice.dev"
	TokenFile       = "token"
	// CopierPrefix starts the names of the copy-mode init containers, and
	// CopySubcommand is the sluice subcommand they run.
	CopierPrefix   = "sluice-copy-"
	CopySubcommand = "fetch"
	// SidecarVolumeRoot is where the sidecar mounts each volume's emptyDir
	// (SidecarVolumeRoot/<volume name>).
	SidecarVolumeRoot = "/sluice/volumes"
	// Environment of the sidecar (downward API).
	EnvPodName      = "SLUICE_POD_NAME"
	EnvPodNamespace = "SLUICE_POD_NAMESPACE"
	EnvPodUID       = "SLUICE_POD_UID"
	EnvMemoryLimit  = "SLUICE_MEMORY_LIMIT"
	// CredentialEnvPrefix prefixes a source volume's credential variables
	// in the sidecar: <prefix><index>_AWS_ACCESS_KEY_ID and
	// <prefix><index>_AWS_SECRET_ACCESS_KEY, index being the volume's
	// position in the sidecar's --volume list.
	CredentialEnvPrefix = "SLUICE_VOL"
	EnvAccessKeyID      = "AWS_ACCESS_KEY_ID"
	EnvSecretAccessKey  = "AWS_SECRET_ACCESS_KEY"

	// Cache workers of a Dataset: the headless Service
	// <dataset>WorkersServiceSuffix in the Dataset's namespace, port
	// WorkersPort; the workers serve the dataset under the Dataset's name.
	WorkersServiceSuffix = "-sluice-workers"
	WorkersPort          = 8080

	// HeartbeatPath is the controller's heartbeat endpoint (POST Heartbeat,
	// answer HeartbeatResponse); HeartbeatExit asks the sidecar to unmount
	// and exit.
	HeartbeatPath = "/v1/heartbeat"
	HeartbeatExit = "exit"

	// TLS of the workers and the heartbeat endpoint. The controller keeps
	// its CA in the Secret CASecret of its namespace and publishes the CA
	// bundle as the ConfigMap CABundleConfigMap (key CABundleKey) in its
	// own namespace and in every namespace whose pods may read a Dataset.
	// Each Dataset's workers serve the Secret <workers Service>WorkersTLSSuffix
	// (tls.crt, tls.key), mounted at WorkersTLSDir.
	CASecret          = "sluice-ca"
	CABundleConfigMap = "sluice-ca-bundle"
	CABundleKey       = "ca.crt"
	WorkersTLSSuffix  = "-tls"
	WorkersTLSDir     = "/etc/sluice/tls"
	// CABundleDir is where the CSI node plugin mounts the CA bundle; the
	// sidecar and the copier find it beside their token, at
	// TokenDir/CABundleKey.
	CABundleDir = "/etc/sluice/ca"
)

// SidecarVolume is one volume the sidecar serves; the webhook passes each as
// a JSON --volume argument.
type SidecarVolume struct {
	// Name is the pod volume's name (an emptyDir after the rewrite).
	Name string `json:"name"`
	// MountPath is where the sidecar mounts the dataset (the emptyDir's
	// mount in the sidecar).
	MountPath string `json:"mountPath"`
	// Source is an origin URL (read directly with the credentials in
	// CredentialsEnv, when set); Dataset is "namespace/name", read through
	// the cache workers at Workers (host:port, a headless Service).
	Source  string `json:"source,omitempty"`
	Dataset string `json:"dataset,omitempty"`
	Workers string `json:"workers,omitempty"`
	// SubPath, CacheSize and Readahead are the volume attributes.
	SubPath   string `json:"subPath,omitempty"`
	CacheSize string `json:"cacheSize,omitempty"`
	Readahead string `json:"readahead,omitempty"`
	// SmallFiles: the kernel opens files without asking the sidecar
	// (AttrSmallFiles).
	SmallFiles bool `json:"smallFiles,omitempty"`
	// CredentialsEnv is the prefix of the two credential variables
	// (<CredentialsEnv>AWS_ACCESS_KEY_ID, <CredentialsEnv>AWS_SECRET_ACCESS_KEY).
	CredentialsEnv string `json:"credentialsEnv,omitempty"`
}

// Heartbeat is what the sidecar POSTs to the controller.
type Heartbeat struct {
	PodUID       string   `json:"podUID"`
	Namespace    string   `json:"namespace"`
	Name         string   `json:"name"`
	Datasets     []string `json:"datasets,omitempty"`
	Sources      int      `json:"sources,omitempty"`
	BytesServed  int64    `json:"bytesServed"`
	BytesPerSec  float64  `json:"bytesPerSecond"`
	CacheHits    int64    `json:"cacheHits"`
	CacheMisses  int64    `json:"cacheMisses"`
	IntervalSecs float64  `json:"intervalSeconds"`
	// FirstReads are, per Dataset ("namespace/name", one of Datasets),
	// the first objects the pod read of it, in order, at most
	// FirstReadsPerClient: the controller warms the next burst's workers
	// with what a burst read first.
	FirstReads map[string][]string `json:"firstReads,omitempty"`
}

// FirstReadsPerClient bounds a heartbeat's first reads per Dataset.
const FirstReadsPerClient = 8

// AddFirstRead appends p to first reads paths unless p is there already
// or they are FirstReadsPerClient long.
func AddFirstRead(paths []string, p string) []string {
	if len(paths) >= FirstReadsPerClient || slices.Contains(paths, p) {
		return paths
	}
	return append(paths, p)
}

// HeartbeatResponse is the controller's answer ("" or HeartbeatExit).
type HeartbeatResponse struct {
	Action string `json:"action,omitempty"`
}

// SplitDatasetRef splits a Dataset reference, "name" or "namespace/name";
// namespace is "" for a bare name.
func SplitDatasetRef(ref string) (namespace, name string) {
	if ns, n, ok := strings.Cut(ref, "/"); ok {
		return ns, n
	}
	return "", ref
}

// SidecarBaseMemory is what a FUSE sidecar holds beside its volumes' caches:
// the Go runtime, FUSE and HTTP buffers and the pages of its binary. The
// README's "Sidecar memory" gives the measurement behind it.
const SidecarBaseMemory int64 = 64 << 20

// SidecarMemoryFraction of its container's memory limit is what a sidecar
// lets its caches and the Go heap use (GOMEMLIMIT); the rest is headroom.
const SidecarMemoryFraction = 0.9

// SidecarMemory is the memory a FUSE sidecar with n volumes needs: the base,
// and per volume its memory tier and the blocks it may fetch at once.
func SidecarMemory(n int, tier, block int64, fetches int) int64 {
	return SidecarBaseMemory + int64(n)*(tier+int64(fetches)*block)
}
