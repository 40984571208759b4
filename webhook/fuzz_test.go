package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

// FuzzHandler posts arbitrary bodies to the real handler with panic
// recovery off, so a panic fails the fuzz run. With wrap, body becomes the
// pod of a well-formed AdmissionReview (when it is JSON), which gets the
// fuzzer past the envelope into the defaulter. Every answer must be an
// AdmissionReview with a response; a refusal must carry a reason. The seed
// corpus is testdata/fuzz/FuzzHandler plus the cases below.
func FuzzHandler(f *testing.F) {
	f.Add(review(f, podKind, pod([]corev1.Volume{srcVol, datasetVol, claim("models", "models")}, label("true"))), false)
	f.Add([]byte(`{"metadata":{"labels":{"sluice.dev/inject":"true"}},"spec":{"volumes":[{"name":"v","csi":{"driver":"csi.sluice.dev","volumeAttributes":{"dataset":"d"}}}],"containers":[{"name":"a","volumeMounts":[{"name":"v","mountPath":"/d"}]}]}}`), true)
	f.Add([]byte(`{"metadata":{"annotations":{"sluice.dev/injected":"native-sidecar"}},"spec":{"initContainers":[{"name":"sluice-fuse","args":["--volume={"]}]}}`), true)
	f.Add([]byte(`{"spec":{"nodeName":"vk-new","volumes":[{"name":"m","persistentVolumeClaim":{"claimName":"models"}}]}}`), true)
	f.Add([]byte(`{"request":null}`), false)
	d := newTestDefaulter(f, nil)
	wh := NewWebhook(NewScheme(), d)
	wh.RecoverPanic = ptr.To(false)
	f.Fuzz(func(t *testing.T, body []byte, wrap bool) {
		if wrap && json.Valid(body) {
			var ar admissionv1.AdmissionReview
			if err := json.Unmarshal(review(t, podKind, json.RawMessage(`{}`)), &ar); err != nil {
				t.Fatal(err)
			}
			ar.Request.Object.Raw = body
			var err error
			if body, err = json.Marshal(ar); err != nil {
				return
			}
		}
		req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		wh.ServeHTTP(rec, req)
		var ar admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &ar); err != nil || ar.Response == nil {
			t.Fatalf("answer is not an AdmissionReview: %v\n%s", err, rec.Body.Bytes())
		}
		if !ar.Response.Allowed && (ar.Response.Result == nil || ar.Response.Result.Message == "") {
			t.Fatalf("refusal without a reason: %s", rec.Body.Bytes())
		}
	})
}
