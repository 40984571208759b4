package driver

import (
	"fmt"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/volattr"
)

// Keys that Kubernetes adds to parameters and volume contexts.
const (
	// k8sPrefix prefixes the keys the external-provisioner and the kubelet
	// add (secret references, pod info, "ephemeral").
	k8sPrefix = volattr.K8sPrefix
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

	// Secret keys of a source volume's credentials: the AWS variables.
	secretAccessKeyID     = contract.EnvAccessKeyID
	secretSecretAccessKey = contract.EnvSecretAccessKey
)

// volumeSpec is what a volume's attributes (StorageClass parameters, PV
// volumeAttributes, inline volumeAttributes) ask for (volattr.Parse).
// Dataset is "namespace/name" of a Dataset read through its cache workers;
// "name" alone until qualify completes it with the volume's namespace.
type volumeSpec volattr.Spec

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
	if s.SmallFiles {
		ctx[contract.AttrSmallFiles] = "true"
	}
	return ctx
}

// sessionSource is what the spec's session serves, for its key: the
// source URL, or the Dataset (a URL has no NUL byte: the two never meet),
// and the mount's kind: a small-files mount is a session of its own.
func (s volumeSpec) sessionSource() string {
	src := s.Source
	if s.Dataset != "" {
		src = "dataset\x00" + s.Dataset
	}
	if s.SmallFiles {
		src += "\x00smallFiles"
	}
	return src
}

// parseVolumeAttrs validates attrs (volattr.Parse, the webhook's rules
// too); errors wrap errInvalid and name the offending key.
func parseVolumeAttrs(attrs map[string]string) (volumeSpec, error) {
	spec, err := volattr.Parse(attrs)
	if err != nil {
		return volumeSpec{}, fmt.Errorf("%w: %w", errInvalid, err)
	}
	return volumeSpec(spec), nil
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
