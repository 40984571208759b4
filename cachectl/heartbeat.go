package cachectl

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/kubeauth"
)

// Identity is the pod a heartbeat's token belongs to.
type Identity = kubeauth.Identity

// Authenticator resolves a projected service-account token (audience
// contract.TokenAudience) to its pod: kubeauth.TokenReviewer.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// PodGetter reads a pod (from an informer cache in the controller).
type PodGetter interface {
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// ExitGrace is how long a sidecar told to exit may keep heartbeating
// before it is reported as overdue.
const ExitGrace = 60 * time.Second

// HeartbeatHandler is the controller's heartbeat endpoint
// (contract.HeartbeatPath): it records each sidecar's throughput for the
// scaler and answers "exit" once the reaper says the pod's app containers
// are done, so Jobs complete without pods/exec.
type HeartbeatHandler struct {
	Auth    Authenticator
	Pods    PodGetter
	Demand  *Demand
	Sidecar string // the sidecar container's name
	Now     func() time.Time
	// Overdue is called (once per pod) when a sidecar told to exit is still
	// heartbeating ExitGrace later; the controller records an event and a
	// metric.
	Overdue func(pod Identity, since time.Duration)
	// Notify, when set, is told the datasets each heartbeat names (the
	// controller wakes their reconcilers: a Dataset scaled to zero gets a
	// worker at once).
	Notify func(datasets []string)
	// Refused, when set, counts refused heartbeats.
	Refused func()
	// Told, when set, counts sidecars told to exit (once per pod).
	Told func()

	mu   sync.Mutex
	told map[string]told // pod UID → when it was told to exit
}

type told struct {
	at       time.Time
	reported bool
}

func (h *HeartbeatHandler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// ServeHTTP implements http.Handler.
func (h *HeartbeatHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST a heartbeat", http.StatusMethodNotAllowed)
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		h.refuse(w, "missing bearer token", http.StatusUnauthorized)
		return
	}
	id, err := h.Auth.Authenticate(r.Context(), token)
	if err != nil {
		h.refuse(w, "unauthorized: "+err.Error(), http.StatusUnauthorized)
		return
	}
	var hb contract.Heartbeat
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&hb); err != nil {
		http.Error(w, "bad heartbeat: "+err.Error(), http.StatusBadRequest)
		return
	}
	if hb.Namespace != id.Namespace || hb.Name != id.PodName || (id.PodUID != "" && hb.PodUID != id.PodUID) {
		h.refuse(w, fmt.Sprintf("heartbeat for pod %s/%s sent with the token of pod %s/%s",
			hb.Namespace, hb.Name, id.Namespace, id.PodName), http.StatusForbidden)
		return
	}
	now := h.now()
	h.Demand.Record(hb.PodUID, hb.Datasets, hb.BytesPerSec, validFirstReads(hb), now)
	if h.Notify != nil && len(hb.Datasets) > 0 {
		h.Notify(hb.Datasets)
	}
	action, err := h.decide(r.Context(), hb, now)
	if err != nil {
		// The controller's trouble must not end a pod: keep serving.
		klog.ErrorS(err, "Heartbeat: cannot decide", "pod", klog.KRef(hb.Namespace, hb.Name))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(contract.HeartbeatResponse{Action: action})
}

func (h *HeartbeatHandler) refuse(w http.ResponseWriter, msg string, code int) {
	if h.Refused != nil {
		h.Refused()
	}
	http.Error(w, msg, code)
}

// decide answers contract.HeartbeatExit when the reaper says so, or when
// the pod the sidecar belongs to is gone.
func (h *HeartbeatHandler) decide(ctx context.Context, hb contract.Heartbeat, now time.Time) (string, error) {
	pod, err := h.Pods.GetPod(ctx, hb.Namespace, hb.Name)
	switch {
	case apierrors.IsNotFound(err) || (err == nil && string(pod.UID) != hb.PodUID):
		h.mu.Lock()
		delete(h.told, hb.PodUID)
		h.mu.Unlock()
		return contract.HeartbeatExit, nil
	case err != nil:
		return "", err
	case !ShouldExit(pod, h.Sidecar):
		return "", nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.told == nil {
		h.told = map[string]told{}
	}
	t, seen := h.told[hb.PodUID]
	if !seen {
		// Sidecars told long ago are gone (or reported): forget them.
		for uid, old := range h.told {
			if now.Sub(old.at) > 10*ExitGrace {
				delete(h.told, uid)
			}
		}
		h.told[hb.PodUID] = told{at: now}
		klog.InfoS("Telling a FUSE sidecar to exit: the pod's app containers are done", "pod", klog.KObj(pod))
		if h.Told != nil {
			h.Told()
		}
	} else if since := now.Sub(t.at); since >= ExitGrace && !t.reported {
		t.reported = true
		h.told[hb.PodUID] = t
		if h.Overdue != nil {
			h.Overdue(Identity{Namespace: hb.Namespace, PodName: hb.Name, PodUID: hb.PodUID}, since)
		}
	}
	return contract.HeartbeatExit, nil
}
