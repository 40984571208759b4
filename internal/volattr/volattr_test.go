package volattr

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		attrs map[string]string
		want  Spec
		err   string // substring of the error; "" for none
	}{
		{"s3 source with options", map[string]string{"source": "s3://bkt/p?region=eu-west-1", "subPath": "/a/b/",
			"cacheSize": "2Gi", "readahead": "8"}, Spec{Source: "s3://bkt/p?region=eu-west-1", SubPath: "a/b", CacheSize: "2Gi", Readahead: "8"}, ""},
		{"file source", map[string]string{"source": "file:///data"}, Spec{Source: "file:///data"}, ""},
		{"dataset by name", map[string]string{"dataset": "imagenet"}, Spec{Dataset: "imagenet"}, ""},
		{"dataset with namespace", map[string]string{"dataset": "ml/imagenet"}, Spec{Dataset: "ml/imagenet"}, ""},
		{"Kubernetes' keys pass", map[string]string{"source": "file:///d", K8sPrefix + "pod.name": "p",
			ProvisionerIdentity: "1"}, Spec{Source: "file:///d"}, ""},
		{"unknown key", map[string]string{"source": "file:///d", "cachesize": "1Gi"}, Spec{}, `unknown volume attribute(s) ["cachesize"]`},
		{"both", map[string]string{"source": "file:///d", "dataset": "x"}, Spec{}, "not both"},
		{"neither", map[string]string{"subPath": "a"}, Spec{}, "is required"},
		{"empty source", map[string]string{"source": ""}, Spec{}, "is required"},
		{"keys in the URL", map[string]string{"source": "s3://AK:SK@bkt/p"}, Spec{}, "credentials"},
		{"unknown scheme", map[string]string{"source": "ftp://h/x"}, Spec{}, `unknown scheme "ftp"`},
		{"relative file URL", map[string]string{"source": "file://rel/x"}, Spec{}, "absolute path"},
		{"file URL with a query", map[string]string{"source": "file:///x?a=b"}, Spec{}, "no user, query or fragment"},
		{"upper-case dataset", map[string]string{"dataset": "ImageNet"}, Spec{}, `"dataset"="ImageNet"`},
		{"dataset in three parts", map[string]string{"dataset": "a/b/c"}, Spec{}, "name"},
		{"subPath escapes", map[string]string{"source": "file:///d", "subPath": "a/../../etc"}, Spec{}, `"subPath"`},
		{"cacheSize too small", map[string]string{"source": "file:///d", "cacheSize": "1Ki"}, Spec{}, "at least 1Mi"},
		{"cacheSize not a size", map[string]string{"source": "file:///d", "cacheSize": "lots"}, Spec{}, `"cacheSize"="lots"`},
		{"readahead too large", map[string]string{"source": "file:///d", "readahead": "257"}, Spec{}, "0..256"},
		{"readahead negative", map[string]string{"source": "file:///d", "readahead": "-1"}, Spec{}, `"readahead"="-1"`},
		{"small files", map[string]string{"source": "file:///d", "smallFiles": "true"}, Spec{Source: "file:///d", SmallFiles: true}, ""},
		{"small files off", map[string]string{"source": "file:///d", "smallFiles": "false"}, Spec{Source: "file:///d"}, ""},
		{"small files not a boolean", map[string]string{"source": "file:///d", "smallFiles": "yes please"}, Spec{}, `"smallFiles"="yes please": want true or false`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.attrs)
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Fatalf("Parse = %+v, %v; want %+v", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Parse error %v; want one containing %q", err, tc.err)
			}
		})
	}
}
