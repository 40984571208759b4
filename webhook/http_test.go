package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

var podKind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}

// review wraps an object into an AdmissionReview request.
func review(t testing.TB, kind metav1.GroupVersionKind, obj any) []byte {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	ar := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: types.UID("uid-1"), Kind: kind, Operation: admissionv1.Create,
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: ns, Object: runtime.RawExtension{Raw: raw}},
	}
	b, err := json.Marshal(ar)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// post sends body to the handler and decodes the AdmissionReview answer.
func post(t testing.TB, h http.Handler, body []byte) (*admissionv1.AdmissionResponse, int) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var ar admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &ar); err != nil || ar.Response == nil {
		t.Fatalf("answer is not an AdmissionReview with a response (HTTP %d): %v\n%s", rec.Code, err, rec.Body.String())
	}
	return ar.Response, rec.Code
}

func newTestWebhook(t testing.TB) *admission.Webhook {
	d := newTestDefaulter(t, nil)
	return NewWebhook(NewScheme(), d)
}

func TestHTTP(t *testing.T) {
	wh := newTestWebhook(t)
	huge := pod(nil, label("true"))
	huge.Annotations = map[string]string{"blob": strings.Repeat("x", MaxPodBytes)}
	deploy := map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": map[string]any{"name": "d"}}
	tests := []struct {
		name    string
		body    []byte
		allowed bool
		patched bool
		reason  string
	}{
		{"converted pod", review(t, podKind, pod([]corev1.Volume{srcVol}, label("true"))), true, true, ""},
		{"untouched pod", review(t, podKind, pod([]corev1.Volume{srcVol})), true, false, ""},
		{"denied pod", review(t, podKind, pod([]corev1.Volume{claim("data", "unbound")}, label("true"))), false, false, "is not bound yet"},
		{"malformed JSON", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{`), false, false, ""},
		{"not JSON", []byte("hello"), false, false, ""},
		{"empty body", nil, false, false, ""},
		{"non-pod kind", review(t, metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, deploy), false, false, "v1 Pods only"},
		{"pod kind with a deployment inside", review(t, podKind, deploy), false, false, "not a v1 Pod"},
		{"pod that is not an object", review(t, podKind, []int{1, 2}), false, false, ""},
		{"huge pod", review(t, podKind, huge), false, false, "sluice accepts pods up to"},
		{"huge body", bytes.Repeat([]byte(" "), 8<<20), false, false, "too large"},
		{"unknown fields in the pod", bytes.Replace(review(t, podKind, pod([]corev1.Volume{srcVol}, label("true"))),
			[]byte(`"spec":{`), []byte(`"spec":{"futureField":{"x":1},`), 1), true, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := post(t, wh, tc.body)
			if resp.Allowed != tc.allowed {
				t.Fatalf("allowed = %v, want %v (result %+v)", resp.Allowed, tc.allowed, resp.Result)
			}
			if patched := len(resp.Patch) > 0; patched != tc.patched {
				t.Fatalf("patched = %v, want %v: %s", patched, tc.patched, resp.Patch)
			}
			if tc.patched && !bytes.Contains(resp.Patch, []byte(`"sluice-fuse"`)) {
				t.Errorf("patch lacks the sidecar: %s", resp.Patch)
			}
			if bytes.Contains(resp.Patch, []byte("futureField")) {
				t.Errorf("patch touches a field the webhook does not know: %s", resp.Patch)
			}
			if !tc.allowed && (resp.Result == nil || resp.Result.Message == "") {
				t.Fatalf("refusal without a reason: %+v", resp.Result)
			}
			if tc.reason != "" && !strings.Contains(resp.Result.Message, tc.reason) {
				t.Errorf("reason %q lacks %q", resp.Result.Message, tc.reason)
			}
		})
	}
}

// BenchmarkHandler measures admission latency of a converted pod through
// the HTTP handler (fake-client lookups); it reports p50/p99.
func BenchmarkHandler(b *testing.B) {
	wh := newTestWebhook(b)
	body := review(b, podKind, pod([]corev1.Volume{srcVol, claim("models", "models"), datasetVol}, label("true")))
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		resp, _ := post(b, wh, body)
		lat = append(lat, time.Since(start))
		if !resp.Allowed || len(resp.Patch) == 0 {
			b.Fatalf("not converted: %+v", resp.Result)
		}
	}
	b.StopTimer()
	if len(lat) >= 100 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}
