// Package deploy_test checks the manifests in this directory: every YAML
// parses, every object has the fields Kubernetes requires, kustomizations
// list exactly their directory's files, and the driver's deployment has
// the properties the CSI driver depends on. (`kubectl apply --dry-run` is
// the cluster harness's job.)
package deploy_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/sluice-dev/sluice/internal/contract"
)

type object struct {
	file string
	u    *obj
}

// obj is a parsed manifest: a generic map with typed accessors.
type obj struct{ Object map[string]any }

func (u *obj) GetKind() string       { return str(u, "kind") }
func (u *obj) GetAPIVersion() string { return str(u, "apiVersion") }
func (u *obj) GetName() string       { return str(u, "metadata", "name") }

// nested walks maps along fields.
func nested(m map[string]any, fields ...string) (any, bool) {
	var v any = m
	for _, f := range fields {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = mm[f]; !ok {
			return nil, false
		}
	}
	return v, true
}

func nestedBool(m map[string]any, fields ...string) bool {
	v, _ := nested(m, fields...)
	b, _ := v.(bool)
	return b
}

func stringsOf(vals []any) []string {
	var out []string
	for _, v := range vals {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// load parses every YAML document below the current directory.
func load(t *testing.T) (objs []object, kustomizations map[string][]string) {
	t.Helper()
	kustomizations = map[string][]string{}
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && (path == "charts" || path == "monitoring") {
			return filepath.SkipDir // templates and rule files, not objects: chart_test.go and cmd/sluice check them
		}
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, doc := range bytes.Split(data, []byte("\n---\n")) {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			var m map[string]any
			if err := yaml.UnmarshalStrict(doc, &m); err != nil {
				t.Errorf("%s (document %d): %v", path, i+1, err)
				continue
			}
			u := &obj{Object: m}
			if u.GetKind() == "Kustomization" {
				kustomizations[filepath.Dir(path)] = stringsOf(slice(u, "resources"))
				continue
			}
			objs = append(objs, object{path, u})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objs, kustomizations
}

func TestManifests(t *testing.T) {
	objs, kustomizations := load(t)
	if len(kustomizations) < 2 {
		t.Fatalf("want kustomizations in base and examples, got %v", kustomizations)
	}
	for dir, res := range kustomizations {
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		var want []string
		for _, f := range files {
			if filepath.Base(f) != "kustomization.yaml" {
				want = append(want, filepath.Base(f))
			}
		}
		got := slices.Clone(res)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s/kustomization.yaml lists %v, the directory has %v", dir, got, want)
		}
	}
	kinds := map[string]int{}
	for _, o := range objs {
		u := o.u
		kinds[u.GetKind()]++
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			t.Errorf("%s: object without apiVersion, kind or metadata.name: %v", o.file, u.Object)
		}
		check, ok := checks[u.GetKind()]
		if !ok {
			t.Errorf("%s: unexpected kind %s", o.file, u.GetKind())
			continue
		}
		check(t, o.file, u)
	}
	for _, k := range []string{"CustomResourceDefinition", "CSIDriver", "Deployment", "DaemonSet", "ClusterRole", "ServiceAccount",
		"StorageClass", "PersistentVolumeClaim", "PersistentVolume", "Pod", "Secret"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in deploy/", k)
		}
	}
}

func str(u *obj, fields ...string) string {
	v, _ := nested(u.Object, fields...)
	s, _ := v.(string)
	return s
}

func slice(u *obj, fields ...string) []any {
	v, _ := nested(u.Object, fields...)
	s, _ := v.([]any)
	return s
}

func podSpec(u *obj) map[string]any {
	path := []string{"spec", "template", "spec"}
	if u.GetKind() == "Pod" {
		path = []string{"spec"}
	}
	v, _ := nested(u.Object, path...)
	m, _ := v.(map[string]any)
	return m
}

func containers(t *testing.T, file string, u *obj) []map[string]any {
	spec := podSpec(u)
	cs, _ := spec["containers"].([]any)
	if len(cs) == 0 {
		t.Errorf("%s: %s %s has no containers", file, u.GetKind(), u.GetName())
	}
	var out []map[string]any
	for _, c := range cs {
		m := c.(map[string]any)
		if m["name"] == nil || m["image"] == nil {
			t.Errorf("%s: container without name or image", file)
		}
		out = append(out, m)
	}
	return out
}

func sluiceArgs(t *testing.T, file string, u *obj) []any {
	for _, c := range containers(t, file, u) {
		if c["name"] == "sluice" {
			args, _ := c["args"].([]any)
			return args
		}
	}
	t.Errorf("%s: no sluice container", file)
	return nil
}

var checks = map[string]func(t *testing.T, file string, u *obj){
	"Namespace": func(*testing.T, string, *obj) {},
	"Dataset": func(t *testing.T, file string, u *obj) {
		if str(u, "spec", "source") == "" || u.GetAPIVersion() != contract.Group+"/"+contract.Version {
			t.Errorf("%s: a Dataset needs spec.source and apiVersion %s/%s", file, contract.Group, contract.Version)
		}
	},
	"CustomResourceDefinition": func(t *testing.T, file string, u *obj) {
		if u.GetName() != "datasets."+contract.Group || str(u, "spec", "names", "kind") != contract.DatasetKind {
			t.Errorf("%s: CRD %s, want datasets.%s of kind %s", file, u.GetName(), contract.Group, contract.DatasetKind)
		}
	},
	"Secret": func(*testing.T, string, *obj) {},
	"CSIDriver": func(t *testing.T, file string, u *obj) {
		if u.GetName() != contract.DriverName {
			t.Errorf("%s: CSIDriver %s, want %s", file, u.GetName(), contract.DriverName)
		}
		attach := nestedBool(u.Object, "spec", "attachRequired")
		podInfo := nestedBool(u.Object, "spec", "podInfoOnMount")
		modes := stringsOf(slice(u, "spec", "volumeLifecycleModes"))
		if attach || !podInfo || !slices.Contains(modes, "Persistent") || !slices.Contains(modes, "Ephemeral") {
			t.Errorf("%s: want attachRequired false, podInfoOnMount true, modes Persistent+Ephemeral", file)
		}
	},
	"Deployment": func(t *testing.T, file string, u *obj) {
		checkLeastPrivilege(t, file, u, true)
		args := sluiceArgs(t, file, u)
		if u.GetName() == "sluice-webhook" {
			if len(args) == 0 || args[0] != "webhook" || !slices.Contains(args, any("--cert-dir=/etc/sluice/webhook-certs")) {
				t.Errorf("%s: the webhook runs `sluice webhook --cert-dir=…`, got %v", file, args)
			}
			return
		}
		if u.GetName() == "sluice-controller" {
			if len(args) == 0 || args[0] != "controller" || !slices.Contains(args, any("--heartbeat-addr=:8090")) {
				t.Errorf("%s: the controller runs `sluice controller --heartbeat-addr=:8090`, got %v", file, args)
			}
			return
		}
		if !slices.Contains(args, any("--mode=controller")) {
			t.Errorf("%s: the controller does not run --mode=controller", file)
		}
		provisions := slices.Contains(args, any("--provision"))
		for _, c := range containers(t, file, u) {
			provisions = provisions || c["name"] == "csi-provisioner"
		}
		if !provisions {
			t.Errorf("%s: nothing provisions PVCs", file)
		}
	},
	"DaemonSet": func(t *testing.T, file string, u *obj) {
		args := sluiceArgs(t, file, u)
		if u.GetName() == "sluice-device-plugin" {
			if len(args) == 0 || args[0] != "device-plugin" {
				t.Errorf("%s: the device plugin runs `sluice device-plugin`, got %v", file, args)
			}
			checkLeastPrivilege(t, file, u, false)
			return
		}
		if !slices.Contains(args, any("--mode=node")) || !slices.Contains(args, any("--node-id=$(NODE_NAME)")) {
			t.Errorf("%s: the node plugin needs --mode=node and --node-id", file)
		}
		registers := slices.Contains(args, any("--registration-dir=/var/lib/kubelet/plugins_registry"))
		for _, c := range containers(t, file, u) {
			registers = registers || c["name"] == "node-driver-registrar"
		}
		if !registers {
			t.Errorf("%s: nothing registers the node plugin with the kubelet", file)
		}
		var bidirectional, fuse bool
		for _, c := range containers(t, file, u) {
			if c["name"] != "sluice" {
				continue
			}
			for _, vm := range c["volumeMounts"].([]any) {
				m := vm.(map[string]any)
				if m["mountPath"] == "/var/lib/kubelet" && m["mountPropagation"] == "Bidirectional" {
					bidirectional = true
				}
				fuse = fuse || m["mountPath"] == "/dev/fuse"
			}
			if priv := nestedBool(c, "securityContext", "privileged"); bidirectional && !priv {
				t.Errorf("%s: Bidirectional propagation needs a privileged container", file)
			}
		}
		if !bidirectional || !fuse {
			t.Errorf("%s: node plugin needs the kubelet dir (Bidirectional) and /dev/fuse", file)
		}
		checkNodeToken(t, file, u)
	},
	"ServiceAccount": func(*testing.T, string, *obj) {},
	"Service":        func(*testing.T, string, *obj) {},
	"ConfigMap":      func(*testing.T, string, *obj) {},
	"Issuer":         func(*testing.T, string, *obj) {},
	"Certificate":    func(*testing.T, string, *obj) {},
	"MutatingWebhookConfiguration": func(t *testing.T, file string, u *obj) {
		for _, w := range slice(u, "webhooks") {
			m := w.(map[string]any)
			path, _ := nested(m, "clientConfig", "service", "path")
			if m["reinvocationPolicy"] != "IfNeeded" || m["sideEffects"] != "None" || path != "/mutate--v1-pod" {
				t.Errorf("%s: webhook %v needs reinvocationPolicy IfNeeded, sideEffects None, path /mutate--v1-pod", file, m["name"])
			}
		}
	},
	"ClusterRole":        checkRules,
	"Role":               checkRules,
	"ClusterRoleBinding": checkBinding,
	"RoleBinding":        checkBinding,
	"StorageClass": func(t *testing.T, file string, u *obj) {
		if str(u, "provisioner") != contract.DriverName {
			t.Errorf("%s: provisioner %q", file, str(u, "provisioner"))
		}
		if str(u, "parameters", contract.AttrSource) == "" && str(u, "parameters", contract.AttrDataset) == "" {
			t.Errorf("%s: StorageClass without source or dataset", file)
		}
	},
	"PersistentVolumeClaim": func(t *testing.T, file string, u *obj) {
		if modes := slice(u, "spec", "accessModes"); !slices.Contains(modes, any("ReadOnlyMany")) {
			t.Errorf("%s: PVC access modes %v, want ReadOnlyMany", file, modes)
		}
	},
	"PersistentVolume": func(t *testing.T, file string, u *obj) {
		if str(u, "spec", "csi", "driver") != contract.DriverName || str(u, "spec", "csi", "volumeHandle") == "" ||
			str(u, "spec", "csi", "volumeAttributes", contract.AttrSource) == "" {
			t.Errorf("%s: static PV needs csi.driver, volumeHandle and a source", file)
		}
	},
	"Pod": func(t *testing.T, file string, u *obj) {
		containers(t, file, u)
		vols, _ := podSpec(u)["volumes"].([]any)
		if len(vols) == 0 {
			t.Errorf("%s: pod without volumes", file)
		}
		for _, v := range vols {
			csi, ok := v.(map[string]any)["csi"].(map[string]any)
			if ok && csi["driver"] != contract.DriverName {
				t.Errorf("%s: inline volume of driver %v", file, csi["driver"])
			}
		}
	},
}

// checkLeastPrivilege: every container of u drops all capabilities, has
// a read-only root file system and no privilege escalation; with nonRoot,
// the pod runs as a non-root user under the RuntimeDefault seccomp profile.
func checkLeastPrivilege(t *testing.T, file string, u *obj, nonRoot bool) {
	t.Helper()
	spec := podSpec(u)
	if nonRoot {
		if !nestedBool(spec, "securityContext", "runAsNonRoot") {
			t.Errorf("%s: %s must run as non-root (securityContext.runAsNonRoot)", file, u.GetName())
		}
		if p, _ := nested(spec, "securityContext", "seccompProfile", "type"); p != "RuntimeDefault" {
			t.Errorf("%s: %s: seccompProfile %v, want RuntimeDefault", file, u.GetName(), p)
		}
	}
	for _, c := range containers(t, file, u) {
		drop, _ := nested(c, "securityContext", "capabilities", "drop")
		dropped, _ := drop.([]any)
		if nestedBool(c, "securityContext", "privileged") || !slices.Contains(dropped, any("ALL")) ||
			!nestedBool(c, "securityContext", "readOnlyRootFilesystem") {
			t.Errorf("%s: %s container %v: want not privileged, capabilities drop [ALL], readOnlyRootFilesystem", file, u.GetName(), c["name"])
		}
		if v, ok := nested(c, "securityContext", "allowPrivilegeEscalation"); !ok || v != false {
			t.Errorf("%s: %s container %v: want allowPrivilegeEscalation false", file, u.GetName(), c["name"])
		}
	}
}

// checkRules refuses wildcards and any access to Secrets, but the
// controller's: it keeps its CA and the workers' certificates in Secrets,
// and may get, create and update them, never list or watch them.
func checkRules(t *testing.T, file string, u *obj) {
	rules := slice(u, "rules")
	if len(rules) == 0 {
		t.Errorf("%s: %s %s has no rules", file, u.GetKind(), u.GetName())
	}
	for _, r := range rules {
		m := r.(map[string]any)
		for _, key := range []string{"apiGroups", "resources", "verbs"} {
			vals, _ := m[key].([]any)
			if len(vals) == 0 {
				t.Errorf("%s: rule without %s", file, key)
			}
			if slices.Contains(vals, any("*")) {
				t.Errorf("%s: wildcard in %s", file, key)
			}
			if key == "resources" && slices.Contains(vals, any("secrets")) {
				if u.GetName() != "sluice-controller" {
					t.Errorf("%s: %s must not read Secrets (the kubelet passes them)", file, u.GetName())
				}
				verbs, _ := m["verbs"].([]any)
				for _, v := range verbs {
					if v != "get" && v != "create" && v != "update" {
						t.Errorf("%s: %s may %s Secrets; want get, create and update only", file, u.GetName(), v)
					}
				}
			}
		}
	}
}

func checkBinding(t *testing.T, file string, u *obj) {
	if str(u, "roleRef", "name") == "" || len(slice(u, "subjects")) == 0 {
		t.Errorf("%s: binding without roleRef or subjects", file)
	}
}

// checkNodeToken: the node plugin reads Datasets with its service account
// (automounted token) and presents a projected token of audience sluice.dev
// to the cache workers, at the path --worker-token-file names.
func checkNodeToken(t *testing.T, file string, u *obj) {
	spec := podSpec(u)
	if auto, ok := spec["automountServiceAccountToken"].(bool); !ok || !auto {
		t.Errorf("%s: the node plugin reads Datasets: it needs automountServiceAccountToken: true", file)
	}
	tokenVolume := ""
	vols, _ := spec["volumes"].([]any)
	for _, v := range vols {
		m := v.(map[string]any)
		sources, _ := nested(m, "projected", "sources")
		list, _ := sources.([]any)
		for _, src := range list {
			sat, ok := src.(map[string]any)["serviceAccountToken"].(map[string]any)
			if ok && sat["audience"] == contract.TokenAudience && sat["path"] == contract.TokenFile {
				tokenVolume, _ = m["name"].(string)
			}
		}
	}
	if tokenVolume == "" {
		t.Errorf("%s: no projected serviceAccountToken volume (audience %s, path %s)", file, contract.TokenAudience, contract.TokenFile)
		return
	}
	for _, c := range containers(t, file, u) {
		if c["name"] != "sluice" {
			continue
		}
		mounted := false
		mounts, _ := c["volumeMounts"].([]any)
		for _, vm := range mounts {
			m := vm.(map[string]any)
			mounted = mounted || (m["name"] == tokenVolume && m["mountPath"] == contract.TokenDir)
		}
		if !mounted {
			t.Errorf("%s: token volume %s is not mounted at %s", file, tokenVolume, contract.TokenDir)
		}
		args, _ := c["args"].([]any)
		if want := "--worker-token-file=" + contract.TokenDir + "/" + contract.TokenFile; !slices.Contains(args, any(want)) {
			t.Errorf("%s: the node plugin's args lack %s", file, want)
		}
	}
}

// TestDatasetAccessRBAC: the CSI node plugin may get Datasets and nothing
// else; the CSI controller may get them too.
func TestDatasetAccessRBAC(t *testing.T) {
	objs, _ := load(t)
	roles := map[string][]any{}
	bound := map[string]string{} // ClusterRole → ServiceAccount namespace/name
	for _, o := range objs {
		if !strings.HasPrefix(o.file, "base/") {
			continue
		}
		switch o.u.GetKind() {
		case "ClusterRole":
			roles[o.u.GetName()] = slice(o.u, "rules")
		case "ClusterRoleBinding":
			for _, s := range slice(o.u, "subjects") {
				m := s.(map[string]any)
				bound[str(o.u, "roleRef", "name")] = m["namespace"].(string) + "/" + m["name"].(string)
			}
		}
	}
	getsDatasets := func(r any) bool {
		m := r.(map[string]any)
		return slices.Equal(stringsOf(m["apiGroups"].([]any)), []string{contract.Group}) &&
			slices.Equal(stringsOf(m["resources"].([]any)), []string{"datasets"}) &&
			slices.Equal(stringsOf(m["verbs"].([]any)), []string{"get"})
	}
	node := roles["sluice-csi-node"]
	if len(node) != 1 || !getsDatasets(node[0]) {
		t.Errorf("ClusterRole sluice-csi-node: rules %v, want only get on datasets.%s", node, contract.Group)
	}
	if bound["sluice-csi-node"] != "sluice-system/sluice-csi-node" {
		t.Errorf("ClusterRole sluice-csi-node is bound to %q, want the node plugin's service account", bound["sluice-csi-node"])
	}
	if !slices.ContainsFunc(roles["sluice-csi-provisioner"], getsDatasets) || bound["sluice-csi-provisioner"] != "sluice-system/sluice-csi-controller" {
		t.Errorf("the CSI controller's ClusterRole needs get on datasets.%s", contract.Group)
	}
}
