package volattr

import (
	"io"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/source"
)

// fuzzKeys are the attributes a fuzzed map may hold, in the order of the
// values FuzzParse gets; bit i of present puts fuzzKeys[i] in the map.
var fuzzKeys = []string{contract.AttrSource, contract.AttrDataset, contract.AttrSubPath,
	contract.AttrCacheSize, contract.AttrReadahead}

// fuzzAttrs builds the attribute map: the known keys present says, and
// extraKey=extraVal when bit 5 of present is set (any key: it may be
// unknown, Kubernetes', or one of the known ones again).
func fuzzAttrs(present uint8, vals []string, extraKey, extraVal string) map[string]string {
	attrs := map[string]string{}
	for i, k := range fuzzKeys {
		if present&(1<<i) != 0 {
			attrs[k] = vals[i]
		}
	}
	if present&(1<<5) != 0 {
		attrs[extraKey] = extraVal
	}
	return attrs
}

// specAttrs is the attribute map that asks for spec (as the driver's
// controller writes it into a PV).
func specAttrs(spec Spec) map[string]string {
	attrs := map[string]string{}
	for k, v := range map[string]string{contract.AttrSource: spec.Source, contract.AttrDataset: spec.Dataset,
		contract.AttrSubPath: spec.SubPath, contract.AttrCacheSize: spec.CacheSize, contract.AttrReadahead: spec.Readahead} {
		if v != "" {
			attrs[k] = v
		}
	}
	return attrs
}

// errText is err's message, "" for nil.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// quietKlog drops klog's info lines (source.Parse logs every source it
// opens) while the fuzz target runs.
func quietKlog(f *testing.F) {
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	f.Cleanup(func() { klog.LogToStderr(true) })
}

// FuzzParse parses attribute maps built from fuzzed keys and values. Parse
// must not panic and must give the same answer twice (it ranges over a
// map); Kubernetes' own keys must not change the answer; an accepted map
// must give a Spec within the documented bounds whose own attributes parse
// back to the same Spec. The seed corpus is testdata/fuzz/FuzzParse plus
// the cases below.
func FuzzParse(f *testing.F) {
	f.Add(uint8(0b11101), "s3://bkt/p?region=eu-west-1", "", "/a/b/", "2Gi", "8", "", "")
	f.Add(uint8(0b00010), "", "ml/imagenet", "", "", "", "", "")
	f.Add(uint8(0b100001), "file:///data", "", "", "", "", K8sPrefix+"pod.name", "p")
	f.Add(uint8(0b100011), "file:///d", "x", "", "", "", "cachesize", "1Gi")
	f.Add(uint8(0b01001), "https://host/object?X-Amz-Signature=abc", "", "", "1048576", "", "", "")
	f.Add(uint8(0b10101), "file:///d", "", "a/../../etc", "", "-1", "", "")
	quietKlog(f)
	f.Fuzz(func(t *testing.T, present uint8, src, dataset, subPath, cacheSize, readahead, extraKey, extraVal string) {
		attrs := fuzzAttrs(present, []string{src, dataset, subPath, cacheSize, readahead}, extraKey, extraVal)
		spec, err := Parse(attrs)
		checkDeterministic(t, attrs, spec, err)
		checkK8sKeysPass(t, attrs, spec, err)
		if err == nil {
			checkSpec(t, attrs, spec)
		}
	})
}

// checkDeterministic fails unless Parse(attrs) answers spec, err again.
func checkDeterministic(t *testing.T, attrs map[string]string, spec Spec, err error) {
	if spec2, err2 := Parse(attrs); spec2 != spec || errText(err2) != errText(err) {
		t.Fatalf("Parse(%q) = %+v, %v, then %+v, %v", attrs, spec, err, spec2, err2)
	}
}

// checkK8sKeysPass fails unless adding the keys Kubernetes adds to attrs
// leaves Parse's answer as it was.
func checkK8sKeysPass(t *testing.T, attrs map[string]string, spec Spec, err error) {
	more := map[string]string{K8sPrefix + "ephemeral": "true", K8sPrefix + "pod.namespace": "ns", ProvisionerIdentity: "1"}
	for k, v := range attrs {
		more[k] = v
	}
	if spec2, err2 := Parse(more); spec2 != spec || errText(err2) != errText(err) {
		t.Fatalf("Kubernetes' keys change Parse(%q) from %+v, %v to %+v, %v", attrs, spec, err, spec2, err2)
	}
}

// checkSpec fails unless an accepted spec keeps the documented bounds and
// its own attributes parse back to it.
func checkSpec(t *testing.T, attrs map[string]string, spec Spec) {
	if (spec.Source == "") == (spec.Dataset == "") {
		t.Fatalf("Parse(%q) = %+v: want exactly one of source and dataset", attrs, spec)
	}
	if spec.Source != "" && CheckSourceURL(spec.Source) != nil {
		t.Fatalf("Parse(%q) accepted source %q, which CheckSourceURL refuses", attrs, spec.Source)
	}
	if strings.HasPrefix(spec.SubPath, "/") || strings.HasSuffix(spec.SubPath, "/") || source.CheckPath(spec.SubPath) != nil {
		t.Fatalf("Parse(%q) = subPath %q: want a checked relative path", attrs, spec.SubPath)
	}
	if spec.CacheSize != "" {
		if q, err := resource.ParseQuantity(spec.CacheSize); err != nil || q.Cmp(*resource.NewQuantity(MinCacheSize, resource.BinarySI)) < 0 {
			t.Fatalf("Parse(%q) = cacheSize %q: want a size of at least 1Mi", attrs, spec.CacheSize)
		}
	}
	if spec.Readahead != "" {
		if n, err := strconv.Atoi(spec.Readahead); err != nil || n < 0 || n > MaxReadahead {
			t.Fatalf("Parse(%q) = readahead %q: want 0..%d", attrs, spec.Readahead, MaxReadahead)
		}
	}
	if again, err := Parse(specAttrs(spec)); err != nil || again != spec {
		t.Fatalf("Parse(%q) = %+v, whose attributes parse as %+v, %v", attrs, spec, again, err)
	}
}
