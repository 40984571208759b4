package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Dataset is a dataset served to pods through sluice: its origin, the cache
// workers that read it (a StatefulSet behind a headless Service
// <name>-sluice-workers), who may mount it, and what to preload.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=ds,categories=sluice
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.source`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyWorkers`
// +kubebuilder:printcolumn:name="Desired",type=integer,JSONPath=`.status.desiredWorkers`
// +kubebuilder:printcolumn:name="Throughput",type=integer,JSONPath=`.status.throughput`,priority=1
// +kubebuilder:printcolumn:name="Cached",type=integer,JSONPath=`.status.cachedBytes`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,46}[a-z0-9])?$')",message="a Dataset's name must be a DNS label of at most 48 characters (its workers' Service is <name>-sluice-workers, and volumes name it)"
type Dataset struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DatasetSpec   `json:"spec"`
	Status DatasetStatus `json:"status,omitempty"`
}

// DatasetSpec is what the user asks for.
//
// +kubebuilder:validation:XValidation:rule="!has(self.replicas) || !has(self.cache) || !has(self.cache.maxWorkers) || self.replicas <= self.cache.maxWorkers",message="spec.replicas may not exceed spec.cache.maxWorkers"
type DatasetSpec struct {
	// Source is the origin URL: s3://bucket/prefix, file:///absolute/path
	// or http(s)://host/object.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.matches('^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file:///.*|https?://[^/?#]+.*)$')",message="spec.source must be s3://bucket[/prefix], file:///absolute/path or http(s)://host/object"
	Source string `json:"source"`

	// SecretRef names a Secret in the Dataset's namespace with the origin
	// credentials (keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY). Only
	// the cache workers see it.
	// +optional
	SecretRef *corev1.LocalObjectReference `json:"secretRef,omitempty"`

	// Options of an s3:// source.
	// +optional
	Options SourceOptions `json:"options,omitempty"`

	// Cache sizes the workers and their scaling.
	// +optional
	Cache CacheSpec `json:"cache,omitempty"`

	// Replicas is the number of cache workers. With the built-in scaler
	// (cache.scaler Builtin) the controller sets it from the clients'
	// throughput; with External an HPA or KEDA sets it through /scale.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Access lists who else may mount the Dataset.
	// +optional
	Access AccessSpec `json:"access,omitempty"`

	// Preload warms the workers' caches with these paths.
	// +optional
	Preload *PreloadSpec `json:"preload,omitempty"`

	// MetadataTTL is how long listings and attributes are cached
	// (default 60s).
	// +optional
	MetadataTTL *metav1.Duration `json:"metadataTTL,omitempty"`
}

// SourceOptions are the S3 options of a source.
type SourceOptions struct {
	// Endpoint is the S3 endpoint URL (default: AWS).
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self == '' || self.matches('^https?://[^/?#]+/?$')",message="spec.options.endpoint must be http(s)://host[:port]"
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// Region is the S3 region.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Region string `json:"region,omitempty"`
	// PathStyle forces path-style requests.
	// +optional
	PathStyle bool `json:"pathStyle,omitempty"`
}

// Scaler chooses who sets spec.replicas.
// +kubebuilder:validation:Enum=Builtin;External
type Scaler string

// Scalers.
const (
	ScalerBuiltin  Scaler = "Builtin"
	ScalerExternal Scaler = "External"
)

// CacheSpec sizes each worker and bounds the scaler.
//
// +kubebuilder:validation:XValidation:rule="!has(self.minWorkers) || !has(self.maxWorkers) || self.minWorkers <= self.maxWorkers",message="spec.cache.minWorkers must not exceed spec.cache.maxWorkers"
type CacheSpec struct {
	// Memory is each worker's memory tier (default 512Mi).
	// +optional
	Memory *resource.Quantity `json:"memory,omitempty"`
	// Disk is each worker's disk tier (default 10Gi; an emptyDir).
	// +optional
	Disk *resource.Quantity `json:"disk,omitempty"`
	// MinWorkers is the fewest workers (default 1; 0 allows scale to zero).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MinWorkers *int32 `json:"minWorkers,omitempty"`
	// MaxWorkers is the most workers (default 8, or minWorkers if larger).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MaxWorkers *int32 `json:"maxWorkers,omitempty"`
	// TargetThroughputPerWorker is the client throughput, bytes per
	// second, one worker should serve (default 200Mi).
	// +optional
	TargetThroughputPerWorker *resource.Quantity `json:"targetThroughputPerWorker,omitempty"`
	// ScaleDownDelay is how long demand must stay lower before workers are
	// removed (default 5m).
	// +optional
	ScaleDownDelay *metav1.Duration `json:"scaleDownDelay,omitempty"`
	// Scaler is Builtin (the controller scales on the clients' throughput)
	// or External (an HPA or KEDA drives /scale; the controller stands
	// aside).
	// +optional
	Scaler Scaler `json:"scaler,omitempty"`
}

// AccessSpec says who may read the Dataset besides its own namespace.
type AccessSpec struct {
	// Namespaces whose pods may mount the Dataset ("*" for all).
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$`
	// +listType=set
	// +optional
	Namespaces []string `json:"namespaces,omitempty"`
}

// PreloadSpec warms the workers' caches.
type PreloadSpec struct {
	// Paths are files or directories (relative to the source) to fetch.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=1024
	// +kubebuilder:validation:items:XValidation:rule="!self.startsWith('/') && !self.contains('..')",message="spec.preload.paths: each path is relative, without .."
	Paths []string `json:"paths"`
	// Every repeats the preload at this interval (e.g. 24h); once when
	// unset.
	// +optional
	Every *metav1.Duration `json:"every,omitempty"`
}

// Dataset phases.
const (
	PhasePending = "Pending"
	PhaseReady   = "Ready"
	PhaseIdle    = "Idle" // scaled to zero
	PhaseFailed  = "Failed"
)

// Condition types.
const (
	ConditionReady           = "Ready"
	ConditionSourceReachable = "SourceReachable"
	ConditionScaling         = "Scaling"
	ConditionPreloaded       = "Preloaded"
)

// DatasetStatus is what the controller observed.
type DatasetStatus struct {
	// ObservedGeneration is the generation last reconciled.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase is Pending, Ready, Idle (no workers) or Failed.
	// +optional
	Phase string `json:"phase,omitempty"`
	// Replicas is the workers' StatefulSet size; ReadyWorkers how many
	// serve; DesiredWorkers what the scaler asks for.
	// +optional
	Replicas int32 `json:"replicas"`
	// +optional
	ReadyWorkers int32 `json:"readyWorkers"`
	// +optional
	DesiredWorkers int32 `json:"desiredWorkers"`
	// Selector selects the workers' pods (for /scale).
	// +optional
	Selector string `json:"selector,omitempty"`
	// Workers is the host:port of the workers' headless Service.
	// +optional
	Workers string `json:"workers,omitempty"`
	// Clients is the number of pods that reported reading the Dataset.
	// +optional
	Clients int32 `json:"clients"`
	// Throughput is the clients' aggregate read rate, bytes per second.
	// +optional
	Throughput int64 `json:"throughput"`
	// CachedBytes is the bytes the workers hold.
	// +optional
	CachedBytes int64 `json:"cachedBytes"`
	// HitRatio is the workers' cache hit ratio in percent.
	// +optional
	HitRatio int32 `json:"hitRatio"`
	// Preload is the progress of the last preload.
	// +optional
	Preload *PreloadStatus `json:"preload,omitempty"`
	// FirstReads are the objects the clients of the latest burst read
	// first (from the sidecars' heartbeats), those most clients read first
	// first. When the pods of the next burst are admitted, before any of
	// them reads, the controller warms the workers with these (Warm).
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=1024
	// +optional
	FirstReads []string `json:"firstReads,omitempty"`
	// Warm is the progress of the latest warm-up with FirstReads.
	// +optional
	Warm *PreloadStatus `json:"warm,omitempty"`
	// Conditions: Ready, SourceReachable, Scaling, Preloaded.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// PreloadStatus is the progress of a preload or a warm-up.
type PreloadStatus struct {
	Files      int64 `json:"files"`
	TotalFiles int64 `json:"totalFiles"`
	Bytes      int64 `json:"bytes"`
	TotalBytes int64 `json:"totalBytes"`
	// ETASeconds is the estimated time left.
	// +optional
	ETASeconds int64 `json:"etaSeconds,omitempty"`
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// Error is why it stopped, if it failed.
	// +optional
	Error string `json:"error,omitempty"`
}

// DatasetList is a list of Datasets.
//
// +kubebuilder:object:root=true
type DatasetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Dataset `json:"items"`
}
