package driver

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

// TestNodeRealDataset runs every part for real: a kube-apiserver with the
// Dataset CRD and deploy/base's RBAC, a `sluice cache-worker` process that
// admits clients by TokenReview (namespaces ml and shared, plus the CSI
// node's service account), and `sluice csi --mode node` reading Datasets
// with the sluice-csi-node service account's own API token and presenting
// its pod-bound sluice.dev token to the worker. A dataset volume is staged
// and read through real FUSE mounts; pods of another namespace are refused.
func TestNodeRealDataset(t *testing.T) {
	testutil.RequireRootFUSE(t)
	api := kubeapi.Start(t)
	ctx := withTimeout(t, 4*time.Minute)
	cl, cs := datasetAPI(ctx, t, api)
	dir := t.TempDir()

	// The node's identity, as the DaemonSet gives it: API access as
	// sluice-system/sluice-csi-node (deploy/base/rbac.yaml: get Datasets,
	// nothing else) and a projected token of audience sluice.dev.
	nodeKubeconfig := writeKubeconfig(t, filepath.Join(dir, "node.kubeconfig"), api.Host,
		serviceAccountToken(ctx, t, cs, "sluice-csi-node", "", nil))
	pod := createPod(ctx, t, cs, "sluice-system", "sluice-csi-node-x1", "sluice-csi-node")
	tokenFile := filepath.Join(dir, "token")
	nodeToken := serviceAccountToken(ctx, t, cs, "sluice-csi-node", contract.TokenAudience, pod)
	mustWrite(t, tokenFile, []byte(nodeToken))

	// The origin (a directory only the worker is told about) and its worker.
	origin := filepath.Join(dir, "origin")
	want := make([]byte, 5<<20+321)
	if _, err := rand.Read(want); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(origin, "models", "m.bin"), want)
	// The worker serves TLS; the node's sessions verify it with the CA.
	serveTLS, verifyTLS := testutil.WorkerTLS(t)
	worker := testutil.StartProc(t, sluiceBinary(t), nil, "listening on ", "cache-worker", "file://"+origin,
		serveTLS[0], serveTLS[1], serveTLS[2], serveTLS[3],
		"--listen", "127.0.0.1:0", "--dataset", "imagenet", "--token-review",
		"--kubeconfig", writeKubeconfig(t, filepath.Join(dir, "admin.kubeconfig"), api.Host, api.Config.BearerToken),
		"--allow-namespaces", "ml,shared", "--trust-service-accounts", "sluice-system/sluice-csi-node", "--cache-dir", "",
		"--v=10") // the most a user can ask for: no token may reach the log
	workerAddr := worker.Line[strings.LastIndex(worker.Line, " ")+1:]
	createDataset(ctx, t, cl, "ml", "imagenet", "file://"+origin, workerAddr, "shared")

	n := &realNode{dir: dir, state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "csi.sock")}
	t.Cleanup(func() { n.cleanup(t) })
	startNode := func() {
		n.drv = startDriver(t, n.socket, "--mode", "node", "--node-id", "n1", "--state-dir", n.state,
			"--cache-dir", filepath.Join(dir, "cache"), "--cache-memory", "64Mi",
			"--kubeconfig", nodeKubeconfig, "--worker-token-file", tokenFile, verifyTLS[0], verifyTLS[1], "-v=10")
		n.c = csi.NewNodeClient(dial(t, n.socket))
	}
	startNode()

	staging := filepath.Join(dir, "staging")
	vctx := map[string]string{contract.AttrDataset: "ml/imagenet"}
	if _, err := n.c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "pv-imagenet", StagingTargetPath: staging,
		VolumeCapability: readerMany, VolumeContext: vctx}); err != nil {
		t.Fatal(err)
	}
	if src := mountSource(t, staging); src != "workers://imagenet" {
		t.Errorf("staging path serves %q, want the Dataset's workers (workers://imagenet)", src)
	}
	publish := func(target, podNS string, vctx map[string]string) error {
		c := map[string]string{podNamespaceKey: podNS, k8sPrefix + "pod.name": "p"}
		for k, v := range vctx {
			c[k] = v
		}
		req := &csi.NodePublishVolumeRequest{VolumeId: "pv-imagenet", TargetPath: target, VolumeCapability: readerMany, VolumeContext: c}
		if c[ephemeralKey] != "true" {
			req.StagingTargetPath = staging
		}
		_, err := n.c.NodePublishVolume(ctx, req)
		return err
	}
	inline := map[string]string{contract.AttrDataset: "imagenet", ephemeralKey: "true"}
	tests := []struct {
		name, podNS string
		vctx        map[string]string
		wantCode    codes.Code
		wantMsg     string
	}{
		{"staged, pod of the Dataset's namespace", "ml", vctx, codes.OK, ""},
		{"staged, pod of a namespace in spec.access.namespaces", "shared", vctx, codes.OK, ""},
		{"staged, pod of another namespace", "other", vctx, codes.PermissionDenied,
			`pods of namespace "other" may not read Dataset ml/imagenet`},
		{"inline, name in the pod's namespace", "ml", inline, codes.OK, ""},
		{"inline, pod of another namespace", "other", map[string]string{contract.AttrDataset: "ml/imagenet", ephemeralKey: "true"},
			codes.PermissionDenied, `add "other" to its spec.access.namespaces`},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			target := filepath.Join(dir, fmt.Sprintf("pod%d", i), "vol")
			err := publish(target, tc.podNS, tc.vctx)
			wantCode(t, err, tc.wantCode, tc.wantMsg)
			if err != nil {
				if m := mountsUnder(t, filepath.Dir(target)); len(m) > 0 {
					t.Errorf("a refused publish left mounts: %v", m)
				}
				return
			}
			got, err := os.ReadFile(filepath.Join(target, "models", "m.bin"))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read through the mount: err %v, %d bytes, equal to the origin's %v", err, len(got), bytes.Equal(got, want))
			}
			if _, err := n.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "pv-imagenet", TargetPath: target}); err != nil {
				t.Fatal(err)
			}
		})
	}

	// kill -9 of the node plugin and of the serving child: the restarted
	// plugin serves the session again from its record (Dataset and workers'
	// address; no secrets needed) and re-binds the published target.
	target := filepath.Join(dir, "pod-restart", "vol")
	if err := publish(target, "ml", vctx); err != nil {
		t.Fatal(err)
	}
	pid := n.sessionPid(t)
	if err := n.drv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil || !waitGone(pid, 5*time.Second) {
		t.Fatalf("killing the serving child %d: %v", pid, err)
	}
	startNode()
	var got []byte
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got, err = os.ReadFile(filepath.Join(target, "models", "m.bin")); err == nil {
			break
		}
	}
	if err != nil || !bytes.Equal(got, want) || n.sessionPid(t) == pid {
		t.Fatalf("after restarting the plugin and the child: read err %v, equal %v, pid %d (was %d)", err,
			bytes.Equal(got, want), n.sessionPid(t), pid)
	}
	if _, err := n.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "pv-imagenet", TargetPath: target}); err != nil {
		t.Fatal(err)
	}

	_, err = n.c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "pv-nope", StagingTargetPath: filepath.Join(dir, "staging-nope"),
		VolumeCapability: readerMany, VolumeContext: map[string]string{contract.AttrDataset: "ml/nope"}})
	wantCode(t, err, codes.NotFound, "Dataset ml/nope not found")

	// The worker checks the token the node presents: with a token of a pod
	// of another namespace instead of the node's, a new session is refused.
	intruder, _ := api.PodToken(t, "other", "intruder", contract.TokenAudience)
	mustWrite(t, tokenFile, []byte(intruder))
	_, err = n.c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "pv-2", StagingTargetPath: filepath.Join(dir, "staging2"),
		VolumeCapability: readerMany, VolumeContext: vctx})
	wantCode(t, err, codes.PermissionDenied, `pods of namespace "other" may not read dataset "imagenet"`)

	// The sessions' logs go with their sessions: read them first.
	logs := map[string]string{"worker": worker.Stderr.String()}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".log") {
			b, _ := os.ReadFile(p)
			logs[p] = string(b)
		}
		return nil
	})
	if _, err := n.c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "pv-imagenet", StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	// At -v=10, neither the worker (which reviews the tokens) nor the node
	// plugin and its sessions logged a token.
	logs["worker"] = worker.Stderr.String()
	if b, err := os.ReadFile(n.drv.log); err == nil {
		logs["node plugin"] = string(b)
	}
	for what, text := range logs {
		text = testutil.Readable(text) // client-go hex-dumps binary bodies
		for name, tok := range map[string]string{"the node's token": nodeToken, "the intruder's token": intruder, "a JWT": "eyJhbGciOi"} {
			if strings.Contains(text, tok) {
				t.Errorf("the %s log holds %s", what, name)
			}
		}
	}
	if len(logs) < 3 || logs["worker"] == "" {
		t.Errorf("found %d logs (worker %d bytes): the scan saw too little", len(logs), len(logs["worker"]))
	}
}

// datasetAPI installs the Dataset CRD, the sluice-system namespace with the
// CSI node's service account and deploy/base's RBAC, and returns an admin
// client and clientset.
func datasetAPI(ctx context.Context, t *testing.T, api *kubeapi.Server) (client.Client, *kubernetes.Clientset) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(api.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(api.Config)
	for _, ns := range []string{"sluice-system", "ml", "shared"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	apply := func(file string) {
		raw, err := os.ReadFile(filepath.Join(repoRoot(), file))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil || len(u.Object) == 0 {
				continue
			}
			if !strings.HasPrefix(u.GetKind(), "Cluster") && u.GetKind() != "CustomResourceDefinition" {
				u.SetNamespace("sluice-system") // kustomize's namespace
			}
			if err := cl.Create(ctx, u); err != nil {
				t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
			}
		}
	}
	apply("deploy/controller/sluice.dev_datasets.yaml")
	apply("deploy/base/rbac.yaml")
	deadline := time.Now().Add(30 * time.Second)
	for cl.List(ctx, &v1alpha1.DatasetList{}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("Datasets not served 30 s after creating the CRD")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return cl, cs
}

// serviceAccountToken requests a token of sluice-system/sa: for the API
// (audience "") or for audience, bound to pod.
func serviceAccountToken(ctx context.Context, t *testing.T, cs *kubernetes.Clientset, sa, audience string, pod *corev1.Pod) string {
	t.Helper()
	expiry := int64(3600)
	spec := authnv1.TokenRequestSpec{ExpirationSeconds: &expiry}
	if audience != "" {
		spec.Audiences = []string{audience}
	}
	if pod != nil {
		spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := cs.CoreV1().ServiceAccounts("sluice-system").CreateToken(ctx, sa, &authnv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// createPod creates (never runs: no kubelet) a pod of service account sa.
func createPod(ctx context.Context, t *testing.T, cs *kubernetes.Clientset, ns, name, sa string) *corev1.Pod {
	t.Helper()
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "sluice", Image: "sluice"}}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// createDataset creates Dataset ns/name whose workers are at workers.
func createDataset(ctx context.Context, t *testing.T, cl client.Client, ns, name, source, workers string, access ...string) {
	t.Helper()
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.DatasetSpec{Source: source, Access: v1alpha1.AccessSpec{Namespaces: access}}}
	if err := cl.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	ds.Status.Workers = workers
	if err := cl.Status().Update(ctx, ds); err != nil {
		t.Fatal(err)
	}
}

func writeKubeconfig(t *testing.T, path, host, token string) string {
	t.Helper()
	mustWrite(t, path, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: t, user: {token: %q}}]
contexts: [{name: t, context: {cluster: t, user: t}}]
current-context: t
`, host, token))
	return path
}

// mountSource is the source field of the mount at path ("" if none).
func mountSource(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != path {
			continue
		}
		for i := 5; i+2 < len(f); i++ {
			if f[i] == "-" {
				return f[i+2]
			}
		}
	}
	return ""
}
