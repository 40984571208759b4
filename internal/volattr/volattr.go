// Package volattr parses the attributes of a sluice volume — StorageClass
// parameters, a PV's or an inline volume's volumeAttributes — with one set
// of rules for the CSI driver and the webhook. Its errors are plain and
// name the attribute; each caller maps them (a gRPC code, an admission
// denial).
package volattr

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/source"
)

const (
	// K8sPrefix prefixes the keys Kubernetes adds (secret references, pod
	// info, "ephemeral"); they pass.
	K8sPrefix = "csi.storage.k8s.io/"
	// ProvisionerIdentity is added to every PV's volumeAttributes by the
	// external-provisioner; it passes.
	ProvisionerIdentity = "storage.kubernetes.io/csiProvisionerIdentity"

	// MinCacheSize and MaxReadahead bound cacheSize (bytes) and readahead
	// (blocks).
	MinCacheSize = 1 << 20
	MaxReadahead = 256
)

// Spec is what a volume's attributes ask for.
type Spec struct {
	Source string
	// Dataset is as given: "name" (in the volume's namespace) or
	// "namespace/name".
	Dataset   string
	SubPath   string // relative, without leading or trailing "/"
	CacheSize string // a Kubernetes quantity; "" takes the default
	Readahead string // blocks; "" takes the default
	// SmallFiles tunes the mount for many small files (fusefs NoOpen).
	SmallFiles bool
}

// Parse validates attrs: known keys only, exactly one of source and
// dataset, a well-formed source URL, a relative subPath, sane cacheSize
// and readahead, a dataset named "name" or "namespace/name" (DNS-1123
// labels).
func Parse(attrs map[string]string) (Spec, error) {
	var spec Spec
	var unknown []string
	for k := range attrs {
		switch {
		case k == contract.AttrSource, k == contract.AttrDataset, k == contract.AttrSubPath,
			k == contract.AttrCacheSize, k == contract.AttrReadahead, k == contract.AttrSmallFiles:
		case strings.HasPrefix(k, K8sPrefix), k == ProvisionerIdentity:
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return spec, fmt.Errorf("unknown volume attribute(s) %q; want %s or %s, and optionally %s, %s, %s or %s", unknown,
			contract.AttrSource, contract.AttrDataset, contract.AttrSubPath, contract.AttrCacheSize, contract.AttrReadahead,
			contract.AttrSmallFiles)
	}
	src, hasSrc := attrs[contract.AttrSource]
	dataset, hasDataset := attrs[contract.AttrDataset]
	switch {
	case hasSrc && hasDataset:
		return spec, fmt.Errorf("give either %q or %q, not both", contract.AttrSource, contract.AttrDataset)
	case hasDataset:
		if err := checkDatasetRef(dataset); err != nil {
			return spec, err
		}
		spec.Dataset = dataset
	case src == "":
		return spec, fmt.Errorf("%q (a URL: s3://bucket/prefix, file:///path, https://host/object) or %q (a Dataset) is required",
			contract.AttrSource, contract.AttrDataset)
	default:
		if err := CheckSourceURL(src); err != nil {
			return spec, fmt.Errorf("%q: %w", contract.AttrSource, err)
		}
		spec.Source = src
	}
	spec.SubPath = strings.Trim(attrs[contract.AttrSubPath], "/")
	if err := source.CheckPath(spec.SubPath); err != nil {
		return spec, fmt.Errorf("%q: %w", contract.AttrSubPath, err)
	}
	if v := attrs[contract.AttrCacheSize]; v != "" {
		q, err := resource.ParseQuantity(v)
		if n, ok := q.AsInt64(); err != nil || !ok || n < MinCacheSize {
			return spec, fmt.Errorf("%q=%q: want a size of at least 1Mi, e.g. 20Gi", contract.AttrCacheSize, v)
		}
		spec.CacheSize = v
	}
	if v := attrs[contract.AttrReadahead]; v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 0 || n > MaxReadahead {
			return spec, fmt.Errorf("%q=%q: want 0..%d blocks", contract.AttrReadahead, v, MaxReadahead)
		}
		spec.Readahead = v
	}
	if v := attrs[contract.AttrSmallFiles]; v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return spec, fmt.Errorf("%q=%q: want true or false", contract.AttrSmallFiles, v)
		}
		spec.SmallFiles = b
	}
	return spec, nil
}

// checkDatasetRef checks "name" or "namespace/name", both DNS-1123 labels
// (the workers' Service name is derived from them).
func checkDatasetRef(ref string) error {
	ns, name, qualified := strings.Cut(ref, "/")
	if !qualified {
		name = ref
	}
	check := func(what, v string) error {
		if errs := validation.IsDNS1123Label(v); len(errs) > 0 {
			return fmt.Errorf("%q=%q (a Dataset: name or namespace/name): %s %s", contract.AttrDataset, ref, what,
				strings.Join(errs, "; "))
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

// CheckSourceURL checks a source URL's form without contacting the origin
// and without needing a file:// path to exist here (the controller and the
// webhook may run elsewhere than the nodes that mount it).
func CheckSourceURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL") // url errors quote the input
	}
	if strings.ToLower(u.Scheme) == "file" {
		if (u.Host != "" && u.Host != "localhost") || u.Opaque != "" || !filepath.IsAbs(u.Path) {
			return errors.New("a file URL names an absolute path: file:///abs/path")
		}
		if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return errors.New("a file URL has no user, query or fragment")
		}
		return nil
	}
	_, err = source.Parse(raw, source.Options{})
	return err
}
