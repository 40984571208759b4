package kubeauth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/sluice-dev/sluice/internal/contract"
)

// reviewer answers TokenReviews from a table (client-go's fake clientset
// with a reactor): the handler's logic, not the API server, is under test.
func reviewer(t *testing.T, answers map[string]authnv1.TokenReviewStatus, calls *int) *TokenReviewer {
	c := fake.NewSimpleClientset()
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		*calls++
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		if len(tr.Spec.Audiences) != 1 || tr.Spec.Audiences[0] != contract.TokenAudience {
			t.Errorf("review asked for audiences %v", tr.Spec.Audiences)
		}
		if tr.Spec.Token == "down" {
			return true, nil, errors.New("connection refused")
		}
		tr.Status = answers[tr.Spec.Token]
		return true, tr, nil
	})
	return &TokenReviewer{Client: c}
}

func TestTokenReviewer(t *testing.T) {
	pod := authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
		Username: "system:serviceaccount:ml:default",
		Extra:    map[string]authnv1.ExtraValue{extraPodName: {"job-1"}, extraPodUID: {"u1"}}}}
	unbound := authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "system:serviceaccount:ml:default"}}
	user := authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "alice"}}
	answers := map[string]authnv1.TokenReviewStatus{"pod": pod, "unbound": unbound, "user": user,
		"bad": {Error: "invalid bearer token"}}
	tests := []struct {
		token   string
		want    Identity
		wantErr string
	}{
		{"pod", Identity{Namespace: "ml", PodName: "job-1", PodUID: "u1", ServiceAccount: "default"}, ""},
		{"unbound", Identity{}, "not bound to a pod"},
		{"user", Identity{}, "not bound to a pod"},
		{"bad", Identity{}, "invalid bearer token"},
		{"down", Identity{}, "connection refused"},
	}
	calls := 0
	r := reviewer(t, answers, &calls)
	for _, tc := range tests {
		t.Run(tc.token, func(t *testing.T) {
			id, err := r.Authenticate(context.Background(), tc.token)
			if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) || id != tc.want {
				t.Fatalf("Authenticate = %+v, %v; want %+v, %q", id, err, tc.want, tc.wantErr)
			}
		})
	}
	before := calls
	now := time.Now()
	r.Now = func() time.Time { return now }
	for range 100 {
		r.Authenticate(context.Background(), "pod")
	}
	if calls-before > 1 {
		t.Errorf("%d reviews for 100 requests with one token, want at most 1", calls-before)
	}
	mid := calls
	now = now.Add(2 * time.Minute)
	r.Authenticate(context.Background(), "pod")
	if calls != mid+1 {
		t.Errorf("%d reviews after the TTL, want exactly 1", calls-mid)
	}
}
