package cacheserver

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/kubeauth"
	"github.com/sluice-dev/sluice/internal/source"
)

// PodTokens admits pods by their projected service-account token (audience
// sluice.dev, checked with a cached TokenReview) when they run in one of
// Namespaces — the Dataset's own and those its access list names ("*":
// every namespace). Another namespace is refused with 403 naming the
// dataset; a bad token with 401.
type PodTokens struct {
	Reviewer   *kubeauth.TokenReviewer
	Namespaces []string
	Dataset    string
	// Trusted are service accounts ("namespace/name") admitted from any
	// namespace: the CSI node plugin, which serves many pods' mounts and
	// checks each pod's namespace itself (podInfoOnMount).
	Trusted []string
}

// Authenticate implements Authenticator.
func (p *PodTokens) Authenticate(r *http.Request) error {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return errors.New("missing bearer token")
	}
	id, err := p.Reviewer.Authenticate(r.Context(), tok)
	if err != nil {
		return err
	}
	if !slices.Contains(p.Namespaces, id.Namespace) && !slices.Contains(p.Namespaces, "*") &&
		!slices.Contains(p.Trusted, id.Namespace+"/"+id.ServiceAccount) {
		klog.InfoS("Refused a pod from another namespace", "dataset", p.Dataset, "pod", klog.KRef(id.Namespace, id.PodName))
		return fmt.Errorf("%w: pods of namespace %q may not read dataset %q", source.ErrPermission, id.Namespace, p.Dataset)
	}
	return nil
}
