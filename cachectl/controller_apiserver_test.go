package cachectl

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

// TestControllerOnAPIServer runs `sluice controller`'s manager against a
// real kube-apiserver + etcd (and kube-controller-manager's garbage
// collector and StatefulSet controllers), with the CRD from deploy/.
func TestControllerOnAPIServer(t *testing.T) {
	srv := kubeapi.Start(t)
	scheme := NewScheme()
	_ = apiextv1.AddToScheme(scheme)
	cl, err := client.New(srv.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	installCRD(ctx, t, cl)
	// After the CRD, so the garbage collector watches Datasets from the start.
	srv.StartControllerManager(t, "garbagecollector", "statefulset")
	for _, ns := range []string{"ml", "team-b"} {
		if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
		// No service-account controller runs: make the pods' account.
		if err := cl.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns}}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("invalid specs are rejected by the API server", func(t *testing.T) { testInvalidSpecs(ctx, t, cl) })

	hbAddr := freeAddr(t)
	o := &Options{WorkerImage: "sluice.local/sluice:test", PullPolicy: "Never", ClusterDomain: "cluster.local",
		HeartbeatAddr: hbAddr, MetricsAddr: "0", HealthAddr: "0", Resync: 200 * time.Millisecond,
		DemandWindow: 3 * time.Second, LeaderElect: true, LeaderNS: "sluice-system", Preload: true,
		WorkersTLS: true, Namespace: "sluice-system", ServiceName: "sluice-controller", OwnerRole: "sluice-controller"}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	worker := startWorker(t)
	o.preloadOpen = worker.open
	// The controller runs with exactly the permissions deploy/ grants it.
	mgr, err := o.NewManager(controllerIdentity(ctx, t, srv, cl))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "imagenet", Namespace: "ml"},
		Spec: v1alpha1.DatasetSpec{Source: "s3://datasets/imagenet", SecretRef: &corev1.LocalObjectReference{Name: "origin"},
			Options: v1alpha1.SourceOptions{Endpoint: "http://minio.storage:9000", PathStyle: true},
			Access:  v1alpha1.AccessSpec{Namespaces: []string{"team-b"}},
			Cache: v1alpha1.CacheSpec{MinWorkers: ptr.To[int32](1), MaxWorkers: ptr.To[int32](4),
				TargetThroughputPerWorker: ptr.To(resource.MustParse("100Mi")),
				ScaleDownDelay:            &metav1.Duration{Duration: 2 * time.Second}}}}
	if err := cl.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKey{Namespace: "ml", Name: WorkersName("imagenet")}

	t.Run("owned objects appear", func(t *testing.T) {
		sts := &appsv1.StatefulSet{}
		eventually(t, 20*time.Second, "the workers' StatefulSet", func() bool { return cl.Get(ctx, key, sts) == nil })
		svc := &corev1.Service{}
		if err := cl.Get(ctx, key, svc); err != nil {
			t.Fatal(err)
		}
		if svc.Spec.ClusterIP != corev1.ClusterIPNone || svc.Spec.Ports[0].Port != contract.WorkersPort {
			t.Errorf("service: clusterIP %q ports %v; want a headless Service on %d", svc.Spec.ClusterIP, svc.Spec.Ports, contract.WorkersPort)
		}
		for _, o := range []metav1.Object{sts, svc} {
			if ref := metav1.GetControllerOf(o); ref == nil || ref.Kind != "Dataset" || ref.Name != "imagenet" {
				t.Errorf("%s: controller reference %v; want the Dataset", o.GetName(), ref)
			}
		}
		args := sts.Spec.Template.Spec.Containers[0].Args
		for _, want := range []string{"cache-worker", "--dataset=imagenet", "--token-review", "--allow-namespaces=ml,team-b",
			"--s3-endpoint=http://minio.storage:9000", "--s3-path-style", "s3://datasets/imagenet"} {
			if !slices.Contains(args, want) {
				t.Errorf("worker args %q lack %q", args, want)
			}
		}
		env := sts.Spec.Template.Spec.Containers[0].Env
		if len(env) != 3 || env[0].ValueFrom.FieldRef == nil || env[0].ValueFrom.FieldRef.FieldPath != "status.podIP" ||
			env[1].ValueFrom.SecretKeyRef.Name != "origin" || env[2].ValueFrom.SecretKeyRef.Name != "origin" {
			t.Errorf("worker env %+v: want POD_IP and the two keys of Secret origin", env)
		}
		for _, want := range []string{"--peers-dns=imagenet-sluice-workers.ml.svc.cluster.local:8080", "--peer-ip=$(POD_IP)",
			"--peer-token-file=" + contract.TokenDir + "/" + contract.TokenFile, "--peers-ca=" + contract.WorkersTLSDir + "/" + contract.CABundleKey} {
			if !slices.Contains(args, want) {
				t.Errorf("worker args %q lack %q", args, want)
			}
		}
		if *sts.Spec.Replicas != 1 {
			t.Errorf("replicas %d, want minWorkers 1", *sts.Spec.Replicas)
		}
		crb := &rbacv1.ClusterRoleBinding{}
		if err := cl.Get(ctx, client.ObjectKey{Name: WorkerRoleBindingName("ml")}, crb); err != nil || crb.RoleRef.Name != "system:auth-delegator" {
			t.Errorf("cluster role binding for the workers: %v %+v", err, crb.RoleRef)
		}
		got := &v1alpha1.Dataset{}
		eventually(t, 10*time.Second, "status", func() bool {
			return cl.Get(ctx, client.ObjectKeyFromObject(ds), got) == nil && got.Status.DesiredWorkers == 1 &&
				got.Status.Workers == "imagenet-sluice-workers.ml.svc.cluster.local:8080" && got.Status.Replicas == 1
		})
		if got.Status.Phase != v1alpha1.PhasePending || got.Status.Selector == "" {
			t.Errorf("status %+v: want Pending (no kubelet runs the workers) and a selector", got.Status)
		}
	})

	var hb endpoint
	t.Run("the CA issues the workers' certificate and publishes its bundle", func(t *testing.T) {
		hb = testAuthority(ctx, t, cl, ds, hbAddr)
	})

	t.Run("a failing worker's reason reaches the status", func(t *testing.T) {
		pod := &corev1.Pod{}
		eventually(t, 20*time.Second, "worker pod 0 from the StatefulSet controller", func() bool {
			return cl.Get(ctx, client.ObjectKey{Namespace: "ml", Name: WorkersName("imagenet") + "-0"}, pod) == nil
		})
		// What the kubelet reports for a worker that exits at start
		// (terminationMessagePolicy FallbackToLogsOnError).
		msg := `sluice: cannot read s3://datasets/imagenet/: permission denied: AccessDenied`
		pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "worker", Image: "sluice.local/sluice:test",
			State:                corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: msg}}}}
		if err := cl.Status().Update(ctx, pod); err != nil {
			t.Fatal(err)
		}
		got := &v1alpha1.Dataset{}
		eventually(t, 10*time.Second, "SourceReachable False with the worker's message", func() bool {
			if cl.Get(ctx, client.ObjectKeyFromObject(ds), got) != nil {
				return false
			}
			for _, c := range got.Status.Conditions {
				if c.Type == v1alpha1.ConditionSourceReachable && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, msg) {
					t.Logf("condition: %s: %s", c.Reason, c.Message)
					return true
				}
			}
			return false
		})
	})

	t.Run("spec changes reach the workers", func(t *testing.T) {
		got := &v1alpha1.Dataset{}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(ds), got); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(got.DeepCopy())
		got.Spec.Cache.Memory = ptr.To(resource.MustParse("1Gi"))
		got.Spec.Access.Namespaces = []string{"team-b", "team-c"}
		if err := cl.Patch(ctx, got, patch); err != nil {
			t.Fatal(err)
		}
		sts := &appsv1.StatefulSet{}
		eventually(t, 10*time.Second, "updated worker args", func() bool {
			if cl.Get(ctx, key, sts) != nil {
				return false
			}
			a := sts.Spec.Template.Spec.Containers[0].Args
			return slices.Contains(a, "--cache-memory=1Gi") && slices.Contains(a, "--allow-namespaces=ml,team-b,team-c")
		})
	})

	t.Run("workers scale 1 to 4 to 1 on 8 sidecars' throughput", func(t *testing.T) {
		testScaling(ctx, t, srv, cl, hb, key)
	})

	t.Run("reaper answers exit once the app is done", func(t *testing.T) {
		testReaper(ctx, t, srv, cl, hb)
	})

	t.Run("preload warms the workers, each block once", func(t *testing.T) { testPreload(ctx, t, cl, worker) })

	t.Run("the next burst is warmed with what the last one read first", func(t *testing.T) {
		testWarmNextBurst(ctx, t, srv, cl, hb, worker)
	})

	t.Run("an external scaler drives /scale", func(t *testing.T) { testExternalScale(ctx, t, srv, cl) })

	t.Run("scale to zero, and a heartbeat wakes it", func(t *testing.T) {
		testScaleFromZero(ctx, t, srv, cl, hb)
	})

	t.Run("admitted pods scale the workers before they heartbeat", func(t *testing.T) {
		testScaleAhead(ctx, t, srv, cl, hb)
	})

	t.Run("deleting the Dataset removes what it owns", func(t *testing.T) {
		if err := cl.Delete(ctx, ds, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "garbage collection of the StatefulSet and Service", func() bool {
			return apierrors.IsNotFound(cl.Get(ctx, key, &appsv1.StatefulSet{})) &&
				apierrors.IsNotFound(cl.Get(ctx, key, &corev1.Service{}))
		})
		// The last Dataset of the namespace: the workers' identity goes too.
		eventually(t, 10*time.Second, "the workers' cluster role binding and service account to go", func() bool {
			return apierrors.IsNotFound(cl.Get(ctx, client.ObjectKey{Name: WorkerRoleBindingName("ml")}, &rbacv1.ClusterRoleBinding{})) &&
				apierrors.IsNotFound(cl.Get(ctx, client.ObjectKey{Namespace: "ml", Name: WorkerServiceAccount}, &corev1.ServiceAccount{}))
		})
	})

	t.Run("a Dataset created again gets its workers' certificate again", func(t *testing.T) {
		tlsKey := client.ObjectKey{Namespace: "ml", Name: WorkersTLSSecret("imagenet")}
		eventually(t, 30*time.Second, "garbage collection of the workers' TLS Secret", func() bool {
			return apierrors.IsNotFound(cl.Get(ctx, tlsKey, &corev1.Secret{}))
		})
		again := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "imagenet", Namespace: "ml"},
			Spec: v1alpha1.DatasetSpec{Source: "s3://datasets/imagenet"}}
		if err := cl.Create(ctx, again); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "the workers' TLS Secret issued again", func() bool {
			return cl.Get(ctx, tlsKey, &corev1.Secret{}) == nil
		})
		if err := cl.Delete(ctx, again); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("removing the installation removes the CA and its bundles", func(t *testing.T) {
		cancel()
		<-done
		done <- nil // for the cleanup
		role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "sluice-controller"}}
		if err := cl.Delete(context.Background(), role); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "garbage collection of the CA Secret and every bundle ConfigMap", func() bool {
			cms := &corev1.ConfigMapList{}
			if err := cl.List(context.Background(), cms); err != nil {
				return false
			}
			for _, cm := range cms.Items {
				if cm.Name == contract.CABundleConfigMap {
					return false
				}
			}
			return apierrors.IsNotFound(cl.Get(context.Background(),
				client.ObjectKey{Namespace: "sluice-system", Name: contract.CASecret}, &corev1.Secret{}))
		})
	})
}

func testInvalidSpecs(ctx context.Context, t *testing.T, cl client.Client) {
	valid := func() v1alpha1.DatasetSpec { return v1alpha1.DatasetSpec{Source: "s3://bucket/prefix"} }
	tests := []struct {
		name   string
		mutate func(*v1alpha1.DatasetSpec)
		want   string
	}{
		{"no source", func(s *v1alpha1.DatasetSpec) { s.Source = "" }, "spec.source"},
		{"unknown scheme", func(s *v1alpha1.DatasetSpec) { s.Source = "ftp://host/x" }, "spec.source must be"},
		{"relative file path", func(s *v1alpha1.DatasetSpec) { s.Source = "file://relative" }, "spec.source must be"},
		{"bad endpoint", func(s *v1alpha1.DatasetSpec) { s.Options.Endpoint = "minio:9000" }, "spec.options.endpoint"},
		{"min above max", func(s *v1alpha1.DatasetSpec) {
			s.Cache.MinWorkers, s.Cache.MaxWorkers = ptr.To[int32](5), ptr.To[int32](2)
		}, "minWorkers must not exceed"},
		{"negative min", func(s *v1alpha1.DatasetSpec) { s.Cache.MinWorkers = ptr.To[int32](-1) }, "spec.cache.minWorkers"},
		{"unknown scaler", func(s *v1alpha1.DatasetSpec) { s.Cache.Scaler = "Magic" }, "spec.cache.scaler"},
		{"bad access namespace", func(s *v1alpha1.DatasetSpec) { s.Access.Namespaces = []string{"Team_B"} }, "spec.access.namespaces"},
		{"absolute preload path", func(s *v1alpha1.DatasetSpec) { s.Preload = &v1alpha1.PreloadSpec{Paths: []string{"/etc"}} }, "spec.preload.paths"},
		{"replicas above max", func(s *v1alpha1.DatasetSpec) {
			s.Replicas, s.Cache.MaxWorkers = ptr.To[int32](9), ptr.To[int32](2)
		}, "spec.replicas may not exceed"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := valid()
			tc.mutate(&spec)
			ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "bad-" + string(rune('a'+i)), Namespace: "ml"}, Spec: spec}
			err := cl.Create(ctx, ds)
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("create: %v; want Invalid naming %q", err, tc.want)
			}
		})
	}
	for _, name := range []string{"with.dots", strings.Repeat("n", 49)} {
		ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ml"}, Spec: valid()}
		if err := cl.Create(ctx, ds); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "DNS label of at most 48") {
			t.Errorf("create Dataset %q: %v; want Invalid naming the rule", name, err)
		}
	}
	ok := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("k", 48), Namespace: "team-b"}, Spec: valid()}
	if err := cl.Create(ctx, ok); err != nil {
		t.Fatalf("a valid Dataset: %v", err)
	}
	_ = cl.Delete(ctx, ok)
}

func testScaling(ctx context.Context, t *testing.T, srv *kubeapi.Server, cl client.Client, url endpoint, key client.ObjectKey) {
	type sidecar struct{ token, uid, name string }
	var sidecars []sidecar
	for i := range 8 {
		name := "reader-" + string(rune('0'+i))
		createConvertedPod(ctx, t, cl, "ml", name, corev1.RestartPolicyAlways)
		tok, uid := srv.PodToken(t, "ml", name, contract.TokenAudience)
		sidecars = append(sidecars, sidecar{tok, uid, name})
	}
	replicas := func() int32 { return stsReplicas(ctx, cl, key) }
	beat := func(rate float64) {
		for _, s := range sidecars {
			action := postHeartbeat(t, url, s.token, contract.Heartbeat{PodUID: s.uid, Namespace: "ml", Name: s.name,
				Datasets: []string{"ml/imagenet"}, BytesPerSec: rate})
			if action != "" {
				t.Fatalf("a running pod's sidecar was told %q", action)
			}
		}
	}
	// Ramp: 8 × 10 → 50 MiB/s against 100 MiB/s per worker (max 4).
	peak := int32(0)
	var lastHigh time.Time // the last heartbeat with demand: the scale-down delay runs from it at the earliest
	for step := 0; step < 150 && peak < 4; step++ {
		lastHigh = time.Now()
		beat(float64(min(10+step*5, 50)) * (1 << 20))
		peak = max(peak, replicas())
		time.Sleep(100 * time.Millisecond)
	}
	if peak != 4 {
		t.Fatalf("peak %d workers; want 4 (400 MiB/s / 100 MiB/s, capped at maxWorkers)", peak)
	}
	// The burst ends: the sidecars idle, then the scale-down delay passes.
	eventually(t, 20*time.Second, "scale down to 1", func() bool {
		beat(0)
		return replicas() == 1
	})
	if d := time.Since(lastHigh); d < 2*time.Second {
		t.Errorf("scaled down %s after the last heartbeat with demand; the scale-down delay is 2s", d)
	}
	evs := &eventsv1.EventList{}
	eventually(t, 10*time.Second, "Scaled events on the Dataset", func() bool {
		if cl.List(ctx, evs, client.InNamespace("ml")) != nil {
			return false
		}
		n := 0
		for _, e := range evs.Items {
			if e.Reason == "Scaled" && e.Regarding.Name == "imagenet" {
				n++
			}
		}
		return n >= 2
	})
}

func testReaper(ctx context.Context, t *testing.T, srv *kubeapi.Server, cl client.Client, url endpoint) {
	pod := createConvertedPod(ctx, t, cl, "ml", "job-0", corev1.RestartPolicyNever)
	tok, uid := srv.PodToken(t, "ml", "job-0", contract.TokenAudience)
	hb := contract.Heartbeat{PodUID: uid, Namespace: "ml", Name: "job-0", Datasets: []string{"ml/imagenet"}}
	if a := postHeartbeat(t, url, tok, hb); a != "" {
		t.Fatalf("app still running: told %q", a)
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{
		{Name: contract.SidecarName, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
		{Name: "app", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}}}
	if err := cl.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, `"exit"`, func() bool { return postHeartbeat(t, url, tok, hb) == contract.HeartbeatExit })
	// Another pod's token cannot speak for this one.
	other, _ := srv.PodToken(t, "ml", "reader-0", contract.TokenAudience)
	body, _ := json.Marshal(hb)
	req, _ := http.NewRequest(http.MethodPost, url.url, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+other)
	resp, err := url.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a heartbeat with another pod's token: %s, want 403", resp.Status)
	}
}

func createConvertedPod(ctx context.Context, t *testing.T, cl client.Client, ns, name string, rp corev1.RestartPolicy) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
		Labels: map[string]string{contract.InjectedLabel: "post-start"}},
		Spec: corev1.PodSpec{RestartPolicy: rp, Containers: []corev1.Container{
			{Name: contract.SidecarName, Image: "sluice"}, {Name: "app", Image: "busybox"}}}}
	if err := cl.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

// endpoint is the controller's heartbeat URL and a client that trusts it.
type endpoint struct {
	url    string
	client *http.Client
}

func postHeartbeat(t *testing.T, url endpoint, token string, hb contract.Heartbeat) string {
	t.Helper()
	body, _ := json.Marshal(hb)
	req, err := http.NewRequest(http.MethodPost, url.url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	var resp *http.Response
	for range 50 { // the endpoint starts with the manager
		if resp, err = url.client.Do(req.Clone(context.Background())); err == nil {
			break
		}
		req.Body, _ = req.GetBody()
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("heartbeat: %s", resp.Status)
	}
	var out contract.HeartbeatResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Action
}

// controllerIdentity applies deploy/controller/rbac.yaml and returns a
// config that authenticates as its service account.
func controllerIdentity(ctx context.Context, t *testing.T, srv *kubeapi.Server, cl client.Client) *rest.Config {
	t.Helper()
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sluice-system"}}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../deploy/controller/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		if u.GetKind() != "ClusterRole" && u.GetKind() != "ClusterRoleBinding" {
			u.SetNamespace("sluice-system")
		}
		if err := cl.Create(ctx, u); err != nil {
			t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	cs := kubernetes.NewForConfigOrDie(srv.Config)
	tr, err := cs.CoreV1().ServiceAccounts("sluice-system").CreateToken(ctx, "sluice-controller",
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &rest.Config{Host: srv.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
}

func installCRD(ctx context.Context, t *testing.T, cl client.Client) {
	t.Helper()
	raw, err := os.ReadFile("../deploy/controller/sluice.dev_datasets.yaml")
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(raw, crd); err != nil {
		t.Fatal(err)
	}
	if err := cl.Create(ctx, crd); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the CRD to be established", func() bool {
		got := &apiextv1.CustomResourceDefinition{}
		if cl.Get(ctx, client.ObjectKeyFromObject(crd), got) != nil {
			return false
		}
		for _, c := range got.Status.Conditions {
			if c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue {
				return true
			}
		}
		return false
	})
	// The discovery cache of a fresh client may lag; wait until Datasets list.
	eventually(t, 30*time.Second, "Datasets to be served", func() bool {
		return cl.List(ctx, &v1alpha1.DatasetList{}) == nil
	})
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func testExternalScale(ctx context.Context, t *testing.T, srv *kubeapi.Server, cl client.Client) {
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "hpa", Namespace: "ml"}, Spec: v1alpha1.DatasetSpec{
		Source: "s3://bucket", Cache: v1alpha1.CacheSpec{Scaler: v1alpha1.ScalerExternal, MaxWorkers: ptr.To[int32](5)}}}
	if err := cl.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKey{Namespace: "ml", Name: WorkersName("hpa")}
	replicas := func() int32 { return stsReplicas(ctx, cl, key) }
	eventually(t, 10*time.Second, "minWorkers (1) before anyone scales", func() bool { return replicas() == 1 })
	// What an HPA does: write spec.replicas through the scale subresource.
	cs := kubernetes.NewForConfigOrDie(srv.Config)
	body := []byte(`{"spec":{"replicas":3}}`)
	if err := cs.RESTClient().Patch(types.MergePatchType).AbsPath("/apis/sluice.dev/v1alpha1/namespaces/ml/datasets/hpa/scale").
		Body(body).Do(ctx).Error(); err != nil {
		t.Fatalf("patching /scale: %v", err)
	}
	eventually(t, 10*time.Second, "the StatefulSet to follow /scale to 3", func() bool { return replicas() == 3 })
	raw, err := cs.RESTClient().Get().AbsPath("/apis/sluice.dev/v1alpha1/namespaces/ml/datasets/hpa/scale").DoRaw(ctx)
	if err != nil || !strings.Contains(string(raw), `"replicas":3`) || !strings.Contains(string(raw), "sluice.dev/dataset=hpa") {
		t.Errorf("GET /scale: %v %s; want spec.replicas 3 and the workers' selector", err, raw)
	}
	_ = cl.Delete(ctx, ds)
}

func testScaleFromZero(ctx context.Context, t *testing.T, srv *kubeapi.Server, cl client.Client, url endpoint) {
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "idle", Namespace: "ml"}, Spec: v1alpha1.DatasetSpec{
		Source: "s3://bucket", Cache: v1alpha1.CacheSpec{MinWorkers: ptr.To[int32](0), MaxWorkers: ptr.To[int32](2),
			ScaleDownDelay: &metav1.Duration{Duration: time.Second}}}}
	if err := cl.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKey{Namespace: "ml", Name: WorkersName("idle")}
	replicas := func() int32 { return stsReplicas(ctx, cl, key) }
	got := &v1alpha1.Dataset{}
	eventually(t, 10*time.Second, "0 workers and phase Idle", func() bool {
		return replicas() == 0 && cl.Get(ctx, client.ObjectKeyFromObject(ds), got) == nil && got.Status.Phase == v1alpha1.PhaseIdle
	})
	createConvertedPod(ctx, t, cl, "ml", "waker", corev1.RestartPolicyAlways)
	tok, uid := srv.PodToken(t, "ml", "waker", contract.TokenAudience)
	start := time.Now()
	postHeartbeat(t, url, tok, contract.Heartbeat{PodUID: uid, Namespace: "ml", Name: "waker", Datasets: []string{"ml/idle"}})
	eventually(t, 5*time.Second, "one worker after the first heartbeat", func() bool { return replicas() == 1 })
	t.Logf("a heartbeat woke the scaled-to-zero Dataset: 1 worker after %s", time.Since(start).Round(time.Millisecond))
	_ = cl.Delete(ctx, ds)
}

// stsReplicas is the StatefulSet's spec.replicas (-1 when it is missing).
func stsReplicas(ctx context.Context, cl client.Client, key client.ObjectKey) int32 {
	sts := &appsv1.StatefulSet{}
	if cl.Get(ctx, key, sts) != nil {
		return -1
	}
	return *sts.Spec.Replicas
}
