package cachectl

import (
	"context"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

// TestTokenReviewerWithARealAPIServer asks a real kube-apiserver for a
// pod-bound token with the sluice audience and reviews it.
func TestTokenReviewerWithARealAPIServer(t *testing.T) {
	api := kubeapi.Start(t)
	cs := kubernetes.NewForConfigOrDie(api.Config)
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ml"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts("ml").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods("ml").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "job-1"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	request := func(audience string) string {
		tr, err := cs.CoreV1().ServiceAccounts("ml").CreateToken(ctx, "default", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
			Audiences: []string{audience}, ExpirationSeconds: ptr.To(int64(600)),
			BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	r := &TokenReviewer{Client: cs}
	id, err := r.Authenticate(ctx, request(contract.TokenAudience))
	if err != nil || id != (Identity{Namespace: "ml", PodName: "job-1", PodUID: string(pod.UID)}) {
		t.Fatalf("pod-bound sluice token: %+v, %v", id, err)
	}
	if _, err := r.Authenticate(ctx, request("some-other-audience")); err == nil {
		t.Fatal("a token for another audience was accepted")
	}
	if _, err := r.Authenticate(ctx, "not-a-token"); err == nil {
		t.Fatal("garbage was accepted")
	}
}
