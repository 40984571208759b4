package kubeauth

import (
	"context"
	"testing"

	"k8s.io/client-go/kubernetes"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

// TestTokenReviewerWithARealAPIServer asks a real kube-apiserver for a
// pod-bound token with the sluice audience and reviews it.
func TestTokenReviewerWithARealAPIServer(t *testing.T) {
	api := kubeapi.Start(t)
	r := &TokenReviewer{Client: kubernetes.NewForConfigOrDie(api.Config)}
	ctx := context.Background()
	tok, uid := api.PodToken(t, "ml", "job-1", contract.TokenAudience)
	id, err := r.Authenticate(ctx, tok)
	if err != nil || id != (Identity{Namespace: "ml", PodName: "job-1", PodUID: uid, ServiceAccount: "default"}) {
		t.Fatalf("pod-bound sluice token: %+v, %v", id, err)
	}
	other, _ := api.PodToken(t, "ml", "job-1", "some-other-audience")
	if _, err := r.Authenticate(ctx, other); err == nil {
		t.Fatal("a token for another audience was accepted")
	}
	if _, err := r.Authenticate(ctx, "not-a-token"); err == nil {
		t.Fatal("garbage was accepted")
	}
}
