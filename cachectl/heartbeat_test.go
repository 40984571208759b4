package cachectl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-dev/sluice/internal/contract"
)

// tokens and pods are fakes of TokenReview and the pod informer, for the
// handler's own logic.
type tokens map[string]Identity

func (f tokens) Authenticate(_ context.Context, tok string) (Identity, error) {
	if id, ok := f[tok]; ok {
		return id, nil
	}
	return Identity{}, errors.New("token not valid")
}

type pods map[string]*corev1.Pod

func (f pods) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	if p, ok := f[ns+"/"+name]; ok {
		return p, nil
	}
	if ns == "broken" {
		return nil, errors.New("apiserver unavailable")
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
}

func jobPod(uid string, done bool) *corev1.Pod {
	state := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	if done {
		state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}
	}
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "job-1", UID: types.UID(uid)},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: contract.SidecarName}, {Name: "train"}}},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "train", State: state}}}}
}

func TestHeartbeatHandler(t *testing.T) {
	me := Identity{Namespace: "ml", PodName: "job-1", PodUID: "u1"}
	hb := contract.Heartbeat{PodUID: "u1", Namespace: "ml", Name: "job-1", Datasets: []string{"ml/imagenet"}, BytesPerSec: 5e8}
	body := func(h contract.Heartbeat) string { b, _ := json.Marshal(h); return string(b) }
	other := hb
	other.Name = "job-2"
	broken := hb
	broken.Namespace = "broken"
	tests := []struct {
		name       string
		method     string
		token      string
		body       string
		pods       pods
		ids        tokens
		wantStatus int
		wantAction string
		wantText   string
	}{
		{"running app: keep serving", "POST", "t1", body(hb), pods{"ml/job-1": jobPod("u1", false)}, tokens{"t1": me}, 200, "", ""},
		{"app done: exit", "POST", "t1", body(hb), pods{"ml/job-1": jobPod("u1", true)}, tokens{"t1": me}, 200, contract.HeartbeatExit, ""},
		{"pod gone: exit", "POST", "t1", body(hb), pods{}, tokens{"t1": me}, 200, contract.HeartbeatExit, ""},
		{"pod recreated under the same name: exit", "POST", "t1", body(hb), pods{"ml/job-1": jobPod("u9", false)}, tokens{"t1": me}, 200, contract.HeartbeatExit, ""},
		{"apiserver trouble never ends a pod", "POST", "t1", body(broken), pods{}, tokens{"t1": {Namespace: "broken", PodName: "job-1", PodUID: "u1"}}, 200, "", ""},
		{"no token", "POST", "", body(hb), pods{}, tokens{}, 401, "", "missing bearer token"},
		{"bad token", "POST", "nope", body(hb), pods{}, tokens{}, 401, "", "token not valid"},
		{"another pod's heartbeat", "POST", "t1", body(other), pods{}, tokens{"t1": me}, 403, "", "sent with the token of pod ml/job-1"},
		{"malformed body", "POST", "t1", "{not json", pods{}, tokens{"t1": me}, 400, "", "bad heartbeat"},
		{"GET", "GET", "t1", "", pods{}, tokens{"t1": me}, 405, "", "POST"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &HeartbeatHandler{Auth: tc.ids, Pods: tc.pods, Demand: &Demand{}, Sidecar: contract.SidecarName}
			req := httptest.NewRequest(tc.method, contract.HeartbeatPath, strings.NewReader(tc.body))
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d (%s), want %d", rec.Code, rec.Body, tc.wantStatus)
			}
			if !strings.Contains(rec.Body.String(), tc.wantText) {
				t.Errorf("body %q lacks %q", rec.Body, tc.wantText)
			}
			if rec.Code != 200 {
				return
			}
			var resp contract.HeartbeatResponse
			if err := json.NewDecoder(bytes.NewReader(rec.Body.Bytes())).Decode(&resp); err != nil || resp.Action != tc.wantAction {
				t.Fatalf("action %q (err %v), want %q", resp.Action, err, tc.wantAction)
			}
		})
	}
}

func TestHeartbeatsFeedDemandAndOverdueExits(t *testing.T) {
	now := time.Unix(1000, 0)
	var overdue []Identity
	h := &HeartbeatHandler{Auth: tokens{}, Pods: pods{"ml/job-1": jobPod("u1", true)}, Demand: &Demand{Window: 30 * time.Second},
		Sidecar: contract.SidecarName, Now: func() time.Time { return now },
		Overdue: func(id Identity, _ time.Duration) { overdue = append(overdue, id) }}
	for i, rate := range []float64{1e8, 3e8} {
		uid := []string{"u1", "u2"}[i]
		h.Demand.Record(uid, []string{"ml/imagenet"}, rate, nil, now)
	}
	if got, n := h.Demand.Of("ml/imagenet", now); got != 4e8 || n != 2 {
		t.Fatalf("demand %v from %d pods, want 4e8 from 2", got, n)
	}
	if got, _ := h.Demand.Of("ml/imagenet", now.Add(31*time.Second)); got != 0 {
		t.Fatalf("stale reports still count: %v", got)
	}
	hb := contract.Heartbeat{PodUID: "u1", Namespace: "ml", Name: "job-1"}
	for _, step := range []time.Duration{0, 30 * time.Second, 61 * time.Second, 90 * time.Second} {
		now = time.Unix(1000, 0).Add(step)
		if a, err := h.decide(context.Background(), hb, now); err != nil || a != contract.HeartbeatExit {
			t.Fatalf("at %s: %q, %v", step, a, err)
		}
	}
	if len(overdue) != 1 || overdue[0].PodUID != "u1" {
		t.Fatalf("overdue reports %v, want one for u1", overdue)
	}
}
