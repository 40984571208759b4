package driver

import (
	"fmt"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/source"
)

// Keys that Kubernetes adds to parameters and volume contexts.
const (
	// k8sPrefix prefixes the keys the external-provisioner and the kubelet
	// add (secret references, pod info, "ephemeral").
	k8sPrefix = "csi.storage.k8s.io/"
	// provisionerIdentity is added to every PV's volumeAttributes by the
	// external-provisioner.
	provisionerIdentity = "storage.kubernetes.io/csiProvisionerIdentity"
	// ephemeralKey marks an inline (CSI ephemeral) volume.
	ephemeralKey = k8sPrefix + "ephemeral"
	// podNamespaceKey is the pod's namespace in a NodePublishVolume's
	// volume context (podInfoOnMount).
	podNamespaceKey = k8sPrefix + "pod.namespace"
	// The PVC and PV of a CreateVolume (external-provisioner
	// --extra-create-metadata, and sluice's own provisioner).
	pvcNameKey      = k8sPrefix + "pvc/name"
	pvcNamespaceKey = k8sPrefix + "pvc/namespace"
	pvNameKey       = k8sPrefix + "pv/name"

	// Secret keys of a source volume's credentials.
	secretAccessKeyID     = "AWS_ACCESS_KEY_ID"
	secretSecretAccessKey = "AWS_SECRET_ACCESS_KEY"

	minCacheSize = 1 << 20
	maxReadahead = 256
)

// volumeSpec is what a volume's attributes (StorageClass parameters, PV
// volumeAttributes, inline volumeAttributes) ask for.
type volumeSpec struct {
	Source string
	// Dataset is "namespace/name" of a Dataset read through its cache
	// workers; "name" alone until qualify completes it with the volume's
	// namespace.
	Dataset   string
	SubPath   string
	CacheSize string // a Kubernetes quantity; "" takes the node's default
	Readahead string // blocks; "" takes the default
}

// context returns the volume context that carries the spec to the node.
func (s volumeSpec) context() map[string]string {
	ctx := map[string]string{contract.AttrSource: s.Source}
	if s.Dataset != "" {
		ctx = map[string]string{contract.AttrDataset: s.Dataset}
	}
	for k, v := range map[string]string{
		contract.AttrSubPath: s.SubPath, contract.AttrCacheSize: s.CacheSize, contract.AttrReadahead: s.Readahead,
	} {
		if v != "" {
			ctx[k] = v
		}
	}
	return ctx
}

// sessionSource is what the spec's session serves, for its key: the
// source URL, or the Dataset (a URL has no NUL byte: the two never meet).
func (s volumeSpec) sessionSource() string {
	if s.Dataset != "" {
		return "dataset\x00" + s.Dataset
	}
	return s.Source
}

// parseVolumeAttrs validates attrs: known keys only (Kubernetes' own keys
// pass), exactly one of source and dataset, a well-formed source URL, a
// relative subPath, sane cacheSize and readahead, a dataset named "name"
// or "namespace/name" (DNS-1123 labels). Errors wrap errInvalid and name
// the offending key.
func parseVolumeAttrs(attrs map[string]string) (volumeSpec, error) {
	var spec volumeSpec
	var unknown []string
	for k := range attrs {
		switch {
		case k == contract.AttrSource, k == contract.AttrDataset, k == contract.AttrSubPath,
			k == contract.AttrCacheSize, k == contract.AttrReadahead:
		case strings.HasPrefix(k, k8sPrefix), k == provisionerIdentity:
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return spec, fmt.Errorf("%w: unknown parameter(s) %q; want %s, %s, %s, %s or %s", errInvalid, unknown,
			contract.AttrSource, contract.AttrDataset, contract.AttrSubPath, contract.AttrCacheSize, contract.AttrReadahead)
	}
	src, hasSrc := attrs[contract.AttrSource]
	dataset, hasDataset := attrs[contract.AttrDataset]
	switch {
	case hasSrc && hasDataset:
		return spec, fmt.Errorf("%w: give either %q or %q, not both", errInvalid, contract.AttrSource, contract.AttrDataset)
	case hasDataset:
		if err := checkDatasetRef(dataset); err != nil {
			return spec, err
		}
		spec.Dataset = dataset
	case !hasSrc || src == "":
		return spec, fmt.Errorf("%w: parameter %q (a URL: s3://bucket/prefix, file:///path, https://host/object) "+
			"or %q is required", errInvalid, contract.AttrSource, contract.AttrDataset)
	default:
		if err := checkSourceURL(src); err != nil {
			return spec, fmt.Errorf("parameter %q: %w", contract.AttrSource, err)
		}
		spec.Source = src
	}
	spec.SubPath = strings.Trim(attrs[contract.AttrSubPath], "/")
	if err := source.CheckPath(spec.SubPath); err != nil {
		return spec, fmt.Errorf("%w: parameter %q: %v", errInvalid, contract.AttrSubPath, err)
	}
	if v := attrs[contract.AttrCacheSize]; v != "" {
		q, err := resource.ParseQuantity(v)
		if n, ok := q.AsInt64(); err != nil || !ok || n < minCacheSize {
			return spec, fmt.Errorf("%w: parameter %q=%q: want a size of at least 1Mi, e.g. 20Gi", errInvalid,
				contract.AttrCacheSize, v)
		}
		spec.CacheSize = v
	}
	if v := attrs[contract.AttrReadahead]; v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 0 || n > maxReadahead {
			return spec, fmt.Errorf("%w: parameter %q=%q: want 0..%d blocks", errInvalid, contract.AttrReadahead, v, maxReadahead)
		}
		spec.Readahead = v
	}
	return spec, nil
}

// checkDatasetRef checks a dataset parameter: "name" or "namespace/name",
// both DNS-1123 labels (the workers' Service name is derived from them).
func checkDatasetRef(ref string) error {
	ns, name, qualified := strings.Cut(ref, "/")
	if !qualified {
		name = ref
	}
	check := func(what, v string) error {
		if errs := validation.IsDNS1123Label(v); len(errs) > 0 {
			return fmt.Errorf("%w: parameter %q=%q (a Dataset: name or namespace/name): %s %s", errInvalid,
				contract.AttrDataset, ref, what, strings.Join(errs, "; "))
		}
		return nil
	}
	if qualified {
		if err := check("namespace", ns); err != nil {
			return err
		}
	}
	return check("name", name)
}

// qualify completes a Dataset named without its namespace with ns, the
// volume's namespace; what says where ns came from (for the error when it
// is empty).
func (s *volumeSpec) qualify(ns, what string) error {
	if s.Dataset == "" || strings.Contains(s.Dataset, "/") {
		return nil
	}
	if ns == "" {
		return fmt.Errorf("%w: parameter %q=%q names no namespace and %s; name it namespace/name", errInvalid,
			contract.AttrDataset, s.Dataset, what)
	}
	s.Dataset = ns + "/" + s.Dataset
	return nil
}

// checkSourceURL checks a source URL's form without contacting the origin
// and without needing a file:// path to exist here (the controller may run
// on another machine than the nodes that mount it).
func checkSourceURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: not a URL", errInvalid) // url errors quote the input
	}
	if strings.ToLower(u.Scheme) == "file" {
		if (u.Host != "" && u.Host != "localhost") || u.Opaque != "" || !filepath.IsAbs(u.Path) {
			return fmt.Errorf("%w: a file URL names an absolute path: file:///abs/path", errInvalid)
		}
		if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return fmt.Errorf("%w: a file URL has no user, query or fragment", errInvalid)
		}
		return nil
	}
	if _, err := source.Parse(raw, source.Options{}); err != nil {
		return err
	}
	return nil
}

// checkCapability accepts read-only file system volumes: access type mount
// (any fs type; the file system is always sluice's) and a reader-only
// access mode.
func checkCapability(c *csi.VolumeCapability) error {
	if err := checkMountCapability(c); err != nil {
		return err
	}
	switch m := c.GetAccessMode().GetMode(); m {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return nil
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return fmt.Errorf("%w: volume capability needs an access mode", errInvalid)
	default:
		return fmt.Errorf("%w: access mode %s is not supported: sluice volumes are read-only "+
			"(want MULTI_NODE_READER_ONLY, i.e. ReadOnlyMany, or SINGLE_NODE_READER_ONLY)", errInvalid, m)
	}
}

// checkMountCapability accepts access type mount, whatever the access mode.
// Inline ephemeral volumes use it: the kubelet always asks for them with
// SINGLE_NODE_WRITER (a pod spec has no access modes, only readOnly), and
// sluice mounts them read-only anyway.
func checkMountCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return fmt.Errorf("%w: volume capability missing", errInvalid)
	}
	if c.GetBlock() != nil {
		return fmt.Errorf("%w: block access is not supported: sluice volumes are read-only file systems", errInvalid)
	}
	if c.GetMount() == nil {
		return fmt.Errorf("%w: volume capability needs access type mount", errInvalid)
	}
	return nil
}

// checkCapabilities checks every capability of a request (at least one).
func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return fmt.Errorf("%w: volume capabilities missing", errInvalid)
	}
	for _, c := range caps {
		if err := checkCapability(c); err != nil {
			return err
		}
	}
	return nil
}

// credentials are a source volume's S3 keys, from node-stage or
// node-publish secrets. They live in memory and in the serving child's
// environment only.
type credentials struct {
	AccessKeyID, SecretAccessKey string
}

func (c credentials) empty() bool { return c.AccessKeyID == "" && c.SecretAccessKey == "" }

// parseSecrets picks the S3 keys out of a request's secrets. Other keys are
// ignored; one key without the other is an error (naming keys, never values).
func parseSecrets(secrets map[string]string) (credentials, error) {
	c := credentials{AccessKeyID: secrets[secretAccessKeyID], SecretAccessKey: secrets[secretSecretAccessKey]}
	if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
		return credentials{}, fmt.Errorf("%w: secrets need both %s and %s", errInvalid, secretAccessKeyID, secretSecretAccessKey)
	}
	return c, nil
}
