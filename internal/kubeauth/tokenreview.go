// Package kubeauth authenticates pods by their projected service-account
// tokens (audience contract.TokenAudience) with the API server's
// TokenReview: the controller's heartbeat endpoint and the cache workers use
// it, so sidecars prove who they are without any secret of sluice's own.
package kubeauth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-dev/sluice/internal/contract"
)

// Identity is the pod a token belongs to.
type Identity struct {
	Namespace, PodName, PodUID string
	// ServiceAccount is the pod's service account name.
	ServiceAccount string
}

// TokenReviewer authenticates projected service-account tokens with the
// API server's TokenReview (audience contract.TokenAudience) and caches
// answers for TTL, so a burst of heartbeats or worker requests costs one
// review per pod, not one per request. Only pod-bound tokens are accepted:
// the pod's name and UID come from the token's extra fields.
type TokenReviewer struct {
	Client kubernetes.Interface
	TTL    time.Duration // default 1 minute
	Now    func() time.Time

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	id  Identity
	err error
	at  time.Time
}

const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
	saPrefix     = "system:serviceaccount:"
)

// Authenticate implements Authenticator.
func (t *TokenReviewer) Authenticate(ctx context.Context, token string) (Identity, error) {
	now := time.Now()
	if t.Now != nil {
		now = t.Now()
	}
	ttl := t.TTL
	if ttl <= 0 {
		ttl = time.Minute
	}
	t.mu.Lock()
	if c, ok := t.cache[token]; ok && now.Sub(c.at) < ttl {
		t.mu.Unlock()
		return c.id, c.err
	}
	t.mu.Unlock()
	id, err := t.review(ctx, token)
	if err != nil && ctx.Err() != nil {
		return id, err // not an answer: do not cache
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cache == nil || len(t.cache) > 10000 {
		t.cache = map[string]cached{}
	}
	t.cache[token] = cached{id: id, err: err, at: now}
	return id, err
}

func (t *TokenReviewer) review(ctx context.Context, token string) (Identity, error) {
	tr, err := t.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{contract.TokenAudience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return Identity{}, fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated {
		msg := tr.Status.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return Identity{}, errors.New("token rejected: " + msg)
	}
	rest, ok := strings.CutPrefix(tr.Status.User.Username, saPrefix)
	ns, sa, ok2 := strings.Cut(rest, ":")
	extra := tr.Status.User.Extra
	if !ok || !ok2 || len(extra[extraPodName]) != 1 || len(extra[extraPodUID]) != 1 {
		return Identity{}, fmt.Errorf("token of %q is not bound to a pod", tr.Status.User.Username)
	}
	return Identity{Namespace: ns, PodName: extra[extraPodName][0], PodUID: extra[extraPodUID][0], ServiceAccount: sa}, nil
}
