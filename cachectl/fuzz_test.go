package cachectl

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/app"
	"github.com/sluice-dev/sluice/internal/contract"
)

// quietKlog drops klog's info lines while the fuzz target runs.
func quietKlog(f *testing.F) {
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	f.Cleanup(func() { klog.LogToStderr(true) })
}

// The patterns of the Dataset CRD (deploy/controller/sluice.dev_datasets.yaml,
// from the markers in dataset_types.go) that the API server checks before
// the controller sees a Dataset.
var (
	crdSource    = regexp.MustCompile(`^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file:///.*|https?://[^/?#]+.*)$`)
	crdEndpoint  = regexp.MustCompile(`^https?://[^/?#]+/?$`)
	crdNamespace = regexp.MustCompile(`^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$`)
)

// fuzzDataset is the Dataset the fuzzed fields describe; present says which
// optional fields are set (bit 0 memory, 1 disk, 2 target throughput, 3
// minWorkers, 4 maxWorkers, 5 replicas, 6 metadataTTL and scaleDownDelay,
// 7 secretRef). ok is false when a quantity does not parse (the API server
// refuses it).
func fuzzDataset(name, ns, src, endpoint, region string, pathStyle bool, present uint8, memory, disk, target string,
	minW, maxW, replicas int32, scaler string, ttl, delay int64, access string) (*v1alpha1.Dataset, bool) {
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: v1alpha1.DatasetSpec{
		Source:  src,
		Options: v1alpha1.SourceOptions{Endpoint: endpoint, Region: region, PathStyle: pathStyle},
		Cache:   v1alpha1.CacheSpec{Scaler: v1alpha1.Scaler(scaler)},
	}}
	if access != "" {
		ds.Spec.Access.Namespaces = strings.Split(access, ",")
	}
	c := &ds.Spec.Cache
	for i, q := range []struct {
		s   string
		dst **resource.Quantity
	}{{memory, &c.Memory}, {disk, &c.Disk}, {target, &c.TargetThroughputPerWorker}} {
		if present&(1<<i) == 0 {
			continue
		}
		v, err := resource.ParseQuantity(q.s)
		if err != nil {
			return nil, false
		}
		*q.dst = &v
	}
	set := func(bit int, v int32, dst **int32) {
		if present&(1<<bit) != 0 {
			*dst = ptr.To(v)
		}
	}
	set(3, minW, &c.MinWorkers)
	set(4, maxW, &c.MaxWorkers)
	set(5, replicas, &ds.Spec.Replicas)
	if present&(1<<6) != 0 {
		ds.Spec.MetadataTTL = &metav1.Duration{Duration: time.Duration(ttl)}
		c.ScaleDownDelay = &metav1.Duration{Duration: time.Duration(delay)}
	}
	if present&(1<<7) != 0 {
		ds.Spec.SecretRef = &corev1.LocalObjectReference{Name: name + "-creds"}
	}
	return ds, true
}

// admitted reports whether the API server and the webhook's rules let ds
// through: the CRD's patterns and bounds, and names that volumes can refer
// to (DNS-1123 labels, as volattr checks them).
func admitted(ds *v1alpha1.Dataset) bool {
	s, c := ds.Spec, ds.Spec.Cache
	inRange := func(p *int32, lo, hi int32) bool { return p == nil || (*p >= lo && *p <= hi) }
	switch {
	case len(validation.IsDNS1123Label(ds.Name)) > 0, len(validation.IsDNS1123Label(ds.Namespace)) > 0:
		return false
	case len(s.Source) > 2048 || !crdSource.MatchString(s.Source):
		return false
	case len(s.Options.Endpoint) > 256 || (s.Options.Endpoint != "" && !crdEndpoint.MatchString(s.Options.Endpoint)):
		return false
	case len(s.Options.Region) > 64, c.Scaler != "" && c.Scaler != v1alpha1.ScalerBuiltin && c.Scaler != v1alpha1.ScalerExternal:
		return false
	case !inRange(c.MinWorkers, 0, 1000), !inRange(c.MaxWorkers, 1, 1000), !inRange(s.Replicas, 0, math.MaxInt32):
		return false
	case c.MinWorkers != nil && c.MaxWorkers != nil && *c.MinWorkers > *c.MaxWorkers:
		return false
	case s.Replicas != nil && c.MaxWorkers != nil && *s.Replicas > *c.MaxWorkers:
		return false
	}
	for _, ns := range s.Access.Namespaces {
		if len(ns) > 63 || !crdNamespace.MatchString(ns) {
			return false
		}
	}
	return len(s.Access.Namespaces) <= 256
}

// fuzzTemplate is the controller's worker template in the fuzz target.
var fuzzTemplate = WorkerTemplate{Image: "sluice:dev", ClusterDomain: "cluster.local",
	Trusted: []string{"kube-system/sluice-node"}}

// FuzzDatasetWorkers builds the workers of fuzzed Datasets — the Service,
// the StatefulSet with the worker pod, and the scaling policy with its
// defaults — and asks the scaler for a worker count. Nothing may panic;
// building twice must give the same objects and leave the Dataset as it
// was. For a Dataset the API server admits, the worker's arguments must
// parse with the worker's own flags into the Dataset's settings, and the
// scaler's answer must stay within minWorkers..maxWorkers (and be at least
// one while anyone reads). The seed corpus is
// testdata/fuzz/FuzzDatasetWorkers plus the cases below.
func FuzzDatasetWorkers(f *testing.F) {
	f.Add("imagenet", "ml", "s3://bucket/prefix", "http://minio:9000", "eu-west-1", true, uint8(0xff), "1Gi", "20Gi", "100Mi",
		int32(0), int32(4), int32(2), "Builtin", int64(30*time.Second), int64(time.Minute), "team,*", 5e8, 3, int32(1))
	f.Add("d", "ns", "file:///data", "", "", false, uint8(0), "", "", "", int32(0), int32(0), int32(0), "", int64(0), int64(0), "", 0.0, 0, int32(0))
	f.Add("d", "ns", "https://host/object", "", "", false, uint8(0b11100), "", "", "1n", int32(1), int32(1000), int32(0), "External",
		int64(0), int64(0), "a,b,a", math.Inf(1), 1, int32(1000))
	quietKlog(f)
	f.Fuzz(func(t *testing.T, name, ns, src, endpoint, region string, pathStyle bool, present uint8, memory, disk, target string,
		minW, maxW, replicas int32, scaler string, ttl, delay int64, access string, demand float64, clients int, current int32) {
		ds, ok := fuzzDataset(name, ns, src, endpoint, region, pathStyle, present, memory, disk, target,
			minW, maxW, replicas, scaler, ttl, delay, access)
		if !ok {
			return
		}
		sts := checkBuildDeterministic(t, ds)
		if !admitted(ds) {
			return
		}
		checkWorkerArgs(t, ds, sts.Spec.Template.Spec.Containers[0].Args)
		checkScaling(t, ds, demand, clients, current)
	})
}

// buildWorkers builds ds's Service, StatefulSet (of 3 pods) and scaling
// policy, as a reconcile does.
func buildWorkers(ds *v1alpha1.Dataset) (*corev1.Service, *appsv1.StatefulSet, ScalerConfig) {
	svc, sts := &corev1.Service{}, &appsv1.StatefulSet{}
	workerService(ds, svc)
	workerStatefulSet(ds, fuzzTemplate, 3, sts)
	return svc, sts, Scaling(ds)
}

// checkBuildDeterministic fails unless building ds's workers twice gives
// the same objects and leaves ds unchanged; it returns the StatefulSet.
func checkBuildDeterministic(t *testing.T, ds *v1alpha1.Dataset) *appsv1.StatefulSet {
	before := ds.DeepCopy()
	svc1, sts1, cfg1 := buildWorkers(ds)
	svc2, sts2, cfg2 := buildWorkers(ds)
	if !equality.Semantic.DeepEqual(ds, before) {
		t.Fatalf("building the workers changed the Dataset:\n%+v\nto\n%+v", before.Spec, ds.Spec)
	}
	if !equality.Semantic.DeepEqual(svc1, svc2) || !equality.Semantic.DeepEqual(sts1, sts2) || cfg1 != cfg2 {
		t.Fatalf("building the workers of %+v twice gives different objects", ds.Spec)
	}
	return sts1
}

// checkWorkerArgs fails unless args (the worker container's) parse with
// `sluice cache-worker`'s flags into ds's settings.
func checkWorkerArgs(t *testing.T, ds *v1alpha1.Dataset, args []string) {
	var o app.WorkerOptions
	fs := pflag.NewFlagSet("cache-worker", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.AddFlags(fs)
	if len(args) == 0 || args[0] != "cache-worker" {
		t.Fatalf("worker args %q: want the cache-worker command", args)
	}
	if err := fs.Parse(args[1:]); err != nil {
		t.Fatalf("worker args %q do not parse: %v", args, err)
	}
	if got := fs.Args(); len(got) != 1 || got[0] != ds.Spec.Source {
		t.Fatalf("worker args %q give SOURCE %q, want [%q]", args, got, ds.Spec.Source)
	}
	if o.Dataset != ds.Name || !o.TokenReview || !slices.Equal(o.Namespaces, ds.AllowedNamespaces()) ||
		!slices.Equal(o.Trusted, fuzzTemplate.Trusted) {
		t.Fatalf("worker args %q give dataset %q, token review %v, namespaces %q, trusted %q", args,
			o.Dataset, o.TokenReview, o.Namespaces, o.Trusted)
	}
	so := ds.Spec.Options
	if o.SourceFlags.S3Endpoint != so.Endpoint || o.SourceFlags.S3Region != so.Region || o.SourceFlags.S3PathStyle != so.PathStyle {
		t.Fatalf("worker args %q give S3 options %+v, want %+v", args, o.SourceFlags, so)
	}
	checkWorkerCache(t, ds, args, o.CacheFlags)
}

// checkWorkerCache fails unless the parsed cache flags are ds's sizes and
// metadata TTL, or the defaults.
func checkWorkerCache(t *testing.T, ds *v1alpha1.Dataset, args []string, cf app.CacheFlags) {
	want := func(q *resource.Quantity, def string) resource.Quantity {
		if q != nil {
			return *q
		}
		return resource.MustParse(def)
	}
	for _, s := range []struct {
		flag, got string
		want      resource.Quantity
	}{{"--cache-memory", cf.Memory, want(ds.Spec.Cache.Memory, defaultMemory)}, {"--cache-disk", cf.Disk, want(ds.Spec.Cache.Disk, defaultDisk)}} {
		if q, err := resource.ParseQuantity(s.got); err != nil || q.Cmp(s.want) != 0 {
			t.Fatalf("worker args %q give %s %q, want %s", args, s.flag, s.got, s.want.String())
		}
	}
	ttl := 60 * time.Second
	if ds.Spec.MetadataTTL != nil {
		ttl = ds.Spec.MetadataTTL.Duration
	}
	if cf.MetadataTTL != ttl {
		t.Fatalf("worker args %q give --metadata-ttl %s, want %s", args, cf.MetadataTTL, ttl)
	}
}

// checkScaling fails unless the scaler's first answer for ds, at a current
// count within its bounds, stays within minWorkers..maxWorkers and is at
// least one when anyone reads (a Dataset with minWorkers above the default
// maxWorkers gets maxWorkers = minWorkers).
func checkScaling(t *testing.T, ds *v1alpha1.Dataset, demand float64, clients int, current int32) {
	cfg := Scaling(ds)
	if math.IsNaN(demand) {
		demand = 0 // heartbeats are JSON: a rate is a number
	}
	demand = math.Abs(demand)
	current = min(max(current, cfg.MinWorkers), cfg.MaxWorkers)
	got := (&Scaler{}).Desired(cfg, time.Unix(1000, 0), current, demand, clients)
	if got < cfg.MinWorkers || got > cfg.MaxWorkers || ((demand > 0 || clients > 0) && got < 1) {
		t.Fatalf("scaler %+v at %d workers for %v B/s from %d clients wants %d workers", cfg, current, demand, clients, got)
	}
}

// fuzzIdentities are the fake TokenReview's tokens: a pod with a UID, one
// without, and one in the namespace whose pod reads fail.
var fuzzIdentities = tokens{
	"t1": {Namespace: "ml", PodName: "job-1", PodUID: "u1"},
	"t2": {Namespace: "ml", PodName: "job-2"},
	"t3": {Namespace: "broken", PodName: "job-3", PodUID: "u3"},
}

// fuzzPods are the fake informer's pods: job-1 done (its sidecar may
// exit), job-2 running.
var fuzzPods = pods{"ml/job-1": jobPod("u1", true), "ml/job-2": jobPod("u2", false)}

// FuzzHeartbeat posts fuzzed heartbeats (method, Authorization header,
// body) to the real handler over fake TokenReview and pods. Every answer
// must be a 200 with a JSON HeartbeatResponse or a refusal (400, 401, 403,
// 405) with a reason; a 200 only for a token of the pod the heartbeat
// names, whose throughput then counts for each of its Datasets (and is
// notified); "exit" only when that pod is gone, replaced or done. The seed
// corpus is testdata/fuzz/FuzzHeartbeat plus the cases below.
func FuzzHeartbeat(f *testing.F) {
	f.Add("POST", "Bearer t1", []byte(`{"podUID":"u1","namespace":"ml","name":"job-1","datasets":["ml/imagenet"],"bytesPerSecond":5e8}`))
	f.Add("POST", "Bearer t2", []byte(`{"podUID":"u9","namespace":"ml","name":"job-2","datasets":["a","a"],"bytesPerSecond":-1}`))
	f.Add("POST", "Bearer t3", []byte(`{"podUID":"u3","namespace":"broken","name":"job-3"}`))
	f.Add("POST", "Bearer t1", []byte(`{"podUID":"u1","namespace":"ml","name":"job-2"}`))
	f.Add("POST", "Bearer nope", []byte(`{}`))
	f.Add("GET", "", []byte(nil))
	f.Add("POST", "Bearer t1", []byte(`{"podUID":"u1","namespace":"ml","name":"job-1"} trailing`))
	quietKlog(f)
	f.Fuzz(func(t *testing.T, method, auth string, body []byte) {
		var notified []string
		h := &HeartbeatHandler{Auth: fuzzIdentities, Pods: fuzzPods, Demand: &Demand{}, Sidecar: contract.SidecarName,
			Now: func() time.Time { return time.Unix(1000, 0) }, Notify: func(ds []string) { notified = append(notified, ds...) }}
		req := httptest.NewRequest(http.MethodPost, contract.HeartbeatPath, bytes.NewReader(body))
		req.Method = method
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			checkHeartbeatRefusal(t, method, rec)
			return
		}
		checkHeartbeatAccepted(t, h, auth, body, rec, notified)
	})
}

// checkHeartbeatRefusal fails unless rec is a refusal the handler
// documents, with a reason.
func checkHeartbeatRefusal(t *testing.T, method string, rec *httptest.ResponseRecorder) {
	switch rec.Code {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusMethodNotAllowed:
	default:
		t.Fatalf("status %d: %q", rec.Code, rec.Body.Bytes())
	}
	if strings.TrimSpace(rec.Body.String()) == "" {
		t.Fatalf("refusal %d without a reason", rec.Code)
	}
	if (method != http.MethodPost) != (rec.Code == http.StatusMethodNotAllowed) {
		t.Fatalf("%s answered %d: %q", method, rec.Code, rec.Body.Bytes())
	}
}

// checkHeartbeatAccepted fails unless a 200 is a JSON HeartbeatResponse
// to a heartbeat of the token's own pod, with its rate recorded, its
// Datasets notified, and "exit" exactly when the pod is gone, replaced or
// done.
func checkHeartbeatAccepted(t *testing.T, h *HeartbeatHandler, auth string, body []byte, rec *httptest.ResponseRecorder, notified []string) {
	var resp contract.HeartbeatResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("200 with %q (%s): not a JSON HeartbeatResponse: %v", rec.Body.Bytes(), rec.Header().Get("Content-Type"), err)
	}
	var hb contract.Heartbeat
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&hb); err != nil {
		t.Fatalf("200 for a body that is not a heartbeat: %v", err)
	}
	id, ok := fuzzIdentities[strings.TrimPrefix(auth, "Bearer ")]
	if !ok || !strings.HasPrefix(auth, "Bearer ") || hb.Namespace != id.Namespace || hb.Name != id.PodName ||
		(id.PodUID != "" && hb.PodUID != id.PodUID) {
		t.Fatalf("200 for heartbeat %+v with Authorization %q", hb, auth)
	}
	for _, ds := range hb.Datasets {
		if rate, n := h.Demand.Of(ds, time.Unix(1000, 0)); rate != max(hb.BytesPerSec, 0) || n != 1 {
			t.Fatalf("heartbeat %+v: Dataset %q has demand %v from %d pods", hb, ds, rate, n)
		}
	}
	if !slices.Equal(notified, hb.Datasets) {
		t.Fatalf("heartbeat %+v notified %q", hb, notified)
	}
	pod := fuzzPods[hb.Namespace+"/"+hb.Name]
	gone := hb.Namespace != "broken" && (pod == nil || string(pod.UID) != hb.PodUID)
	if want := gone || ShouldExit(pod, contract.SidecarName); (resp.Action == contract.HeartbeatExit) != want || (resp.Action != "" && resp.Action != contract.HeartbeatExit) {
		t.Fatalf("heartbeat %+v answered action %q; pod gone, replaced or done: %v", hb, resp.Action, want)
	}
}
