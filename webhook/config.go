package webhook

import (
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/version"
	"sigs.k8s.io/yaml"

	"github.com/sluice-dev/sluice/internal/contract"
)

// Privilege profile and native-sidecar policy names.
const (
	ProfilePrivileged = "privileged"

	NativeAuto   = "auto"
	NativeAlways = "always"
	NativeNever  = "never"

	// minNativeKubelet is the first kubelet with native sidecars on by
	// default (SidecarContainers beta).
	minNativeKubelet = "1.29.0"
)

// Config is the webhook's configuration file (--config, YAML). Every field
// has a default; an empty file is a valid configuration.
type Config struct {
	// Serverless says which nodes are serverless.
	Serverless ServerlessConfig `json:"serverless"`
	// Sidecar describes the FUSE sidecar container.
	Sidecar SidecarConfig `json:"sidecar"`
	// Profile is the privilege profile: "privileged" (the default: the
	// sidecar alone is privileged, for Bidirectional propagation) or the
	// name of an entry of PlatformProfiles.
	Profile string `json:"profile"`
	// PlatformProfiles are profiles for platforms that propagate mounts by
	// their own means: no privileged, CAP_SYS_ADMIN, /dev/fuse from the
	// device resource sluice.dev/fuse.
	PlatformProfiles map[string]PlatformProfile `json:"platformProfiles"`
	// NativeSidecar is auto (native when the node's kubelet is ≥ 1.29),
	// always or never (containers[0] with a postStart hook).
	NativeSidecar string `json:"nativeSidecar"`
	// AssumeKubeletVersion decides "auto" when the pod's node is not known
	// yet (no nodeName), e.g. "1.31".
	AssumeKubeletVersion string `json:"assumeKubeletVersion"`
	// ClusterDomain completes the cache workers' Service names.
	ClusterDomain string `json:"clusterDomain"`
	// ControllerURL receives the sidecars' heartbeats ("" disables them).
	ControllerURL string `json:"controllerURL"`
	// InsecureWorkers sends pods' tokens to the workers and the
	// controller over plain HTTP. Off (the default), the sidecar and the
	// copier verify them against the CA bundle the controller publishes in
	// every namespace (the ConfigMap sluice-ca-bundle, projected beside the
	// token).
	InsecureWorkers bool `json:"insecureWorkers"`
	// Mode is how converted pods get their data unless the pod's
	// annotation or its namespace's label (sluice.dev/mode) says otherwise:
	// "fuse" (the FUSE sidecar, the default) or "copy" (a copy-mode init
	// container; no privileges, no /dev/fuse).
	Mode string `json:"mode"`
	// Copier sizes the copy-mode init containers.
	Copier CopierConfig `json:"copier"`
	// StartupTimeoutSeconds bounds how long the sidecar may take to serve
	// every mount before the pod's start fails.
	StartupTimeoutSeconds int32 `json:"startupTimeoutSeconds"`
}

// ServerlessConfig recognises serverless nodes.
type ServerlessConfig struct {
	// NodeSelectors: a node is serverless when its labels contain every
	// label of one of these sets.
	NodeSelectors []map[string]string `json:"nodeSelectors"`
	// TolerationKeys: a pod that tolerates a taint with one of these keys
	// (a toleration naming the key) targets serverless nodes.
	TolerationKeys []string `json:"tolerationKeys"`
}

// SidecarConfig describes the sidecar container.
type SidecarConfig struct {
	Image           string            `json:"image"`
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy"`
	// Binary is the sluice executable in the image (for exec hooks).
	Binary    string                      `json:"binary"`
	Resources corev1.ResourceRequirements `json:"resources"`
	// CacheMemory is the memory tier per volume (--cache-memory).
	CacheMemory string `json:"cacheMemory"`
	// CacheDisk sizes an emptyDir disk tier shared by the pod's volumes
	// ("" or "0": memory only).
	CacheDisk string `json:"cacheDisk"`
	// ExtraArgs are appended to the sidecar's arguments.
	ExtraArgs []string `json:"extraArgs"`
}

// CopierConfig is the copy-mode init container's: the reads in flight and
// its resources (its image is the sidecar's).
type CopierConfig struct {
	Parallel  int                         `json:"parallel"`
	Resources corev1.ResourceRequirements `json:"resources"`
}

// PlatformProfile is a non-privileged profile.
type PlatformProfile struct {
	// Capabilities added after dropping ALL (default [SYS_ADMIN]).
	Capabilities []corev1.Capability `json:"capabilities"`
	// FuseDevice requests sluice.dev/fuse: 1 for /dev/fuse (default true).
	FuseDevice *bool `json:"fuseDevice"`
	// Annotations are added to the pod (what the platform needs).
	Annotations map[string]string `json:"annotations"`
}

// DefaultConfig returns the configuration used when --config is not given.
func DefaultConfig() *Config {
	c := &Config{}
	c.setDefaults()
	return c
}

// LoadConfig reads, defaults and validates a configuration file. Unknown
// fields are errors.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	c := &Config{}
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	return c, nil
}

func (c *Config) setDefaults() {
	if len(c.Serverless.NodeSelectors) == 0 {
		c.Serverless.NodeSelectors = []map[string]string{{contract.ServerlessNodeLabelKey: contract.ServerlessNodeLabelValue}}
	}
	if c.Serverless.TolerationKeys == nil {
		c.Serverless.TolerationKeys = []string{contract.ServerlessTaintKey}
	}
	if c.Sidecar.Image == "" {
		c.Sidecar.Image = "ghcr.io/sluice-dev/sluice:latest"
	}
	if c.Sidecar.ImagePullPolicy == "" {
		c.Sidecar.ImagePullPolicy = corev1.PullIfNotPresent
	}
	if c.Sidecar.Binary == "" {
		c.Sidecar.Binary = "sluice"
	}
	if c.Sidecar.Resources.Requests == nil && c.Sidecar.Resources.Limits == nil {
		// Memory follows the pod's volumes (sizeSidecar).
		c.Sidecar.Resources = corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")},
		}
	}
	if c.Sidecar.CacheMemory == "" {
		c.Sidecar.CacheMemory = "256Mi"
	}
	if c.Profile == "" {
		c.Profile = ProfilePrivileged
	}
	if c.NativeSidecar == "" {
		c.NativeSidecar = NativeAuto
	}
	if c.AssumeKubeletVersion == "" {
		c.AssumeKubeletVersion = "1.29"
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = "cluster.local"
	}
	if c.Mode == "" {
		c.Mode = contract.ModeFUSE
	}
	if c.Copier.Parallel == 0 {
		c.Copier.Parallel = 16
	}
	if c.Copier.Resources.Requests == nil && c.Copier.Resources.Limits == nil {
		c.Copier.Resources = corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
		}
	}
	if c.StartupTimeoutSeconds == 0 {
		c.StartupTimeoutSeconds = 120
	}
	for name, p := range c.PlatformProfiles {
		if p.Capabilities == nil {
			p.Capabilities = []corev1.Capability{"SYS_ADMIN"}
		}
		if p.FuseDevice == nil {
			t := true
			p.FuseDevice = &t
		}
		c.PlatformProfiles[name] = p
	}
}

// Validate checks a defaulted configuration.
func (c *Config) Validate() error {
	if c.Profile != ProfilePrivileged {
		if _, ok := c.PlatformProfiles[c.Profile]; !ok {
			return fmt.Errorf("profile %q: want %q or the name of an entry of platformProfiles", c.Profile, ProfilePrivileged)
		}
	}
	if _, ok := c.PlatformProfiles[ProfilePrivileged]; ok {
		return fmt.Errorf("platformProfiles: %q is the built-in profile's name", ProfilePrivileged)
	}
	switch c.NativeSidecar {
	case NativeAuto, NativeAlways, NativeNever:
	default:
		return fmt.Errorf("nativeSidecar %q: want %s, %s or %s", c.NativeSidecar, NativeAuto, NativeAlways, NativeNever)
	}
	if _, err := version.ParseGeneric(c.AssumeKubeletVersion); err != nil {
		return fmt.Errorf("assumeKubeletVersion %q: %w", c.AssumeKubeletVersion, err)
	}
	for i, sel := range c.Serverless.NodeSelectors {
		if len(sel) == 0 {
			return fmt.Errorf("serverless.nodeSelectors[%d] is empty: it would match every node", i)
		}
	}
	for _, q := range []struct{ name, v string }{{"sidecar.cacheMemory", c.Sidecar.CacheMemory}, {"sidecar.cacheDisk", c.Sidecar.CacheDisk}} {
		if q.v == "" {
			continue
		}
		if _, err := resource.ParseQuantity(q.v); err != nil {
			return fmt.Errorf("%s %q: %w", q.name, q.v, err)
		}
	}
	if c.Mode != contract.ModeFUSE && c.Mode != contract.ModeCopy {
		return fmt.Errorf("mode %q: want %q or %q", c.Mode, contract.ModeFUSE, contract.ModeCopy)
	}
	if c.Copier.Parallel < 1 || c.Copier.Parallel > 256 {
		return fmt.Errorf("copier.parallel %d: want 1..256", c.Copier.Parallel)
	}
	if c.StartupTimeoutSeconds < 1 || c.StartupTimeoutSeconds > 3600 {
		return fmt.Errorf("startupTimeoutSeconds %d: want 1..3600", c.StartupTimeoutSeconds)
	}
	if c.ControllerURL != "" && !strings.HasPrefix(c.ControllerURL, "http://") && !strings.HasPrefix(c.ControllerURL, "https://") {
		return fmt.Errorf("controllerURL %q: want an http(s) URL", c.ControllerURL)
	}
	if strings.HasPrefix(c.ControllerURL, "http://") && !c.InsecureWorkers {
		return fmt.Errorf("controllerURL %q: pods send their token to it, only over TLS: use https:// (the controller serves TLS with --tls), or set insecureWorkers", c.ControllerURL)
	}
	return nil
}

// diskCache reports whether the sidecar gets a disk tier.
func (c *Config) diskCache() bool {
	if c.Sidecar.CacheDisk == "" {
		return false
	}
	q, err := resource.ParseQuantity(c.Sidecar.CacheDisk)
	return err == nil && !q.IsZero()
}
