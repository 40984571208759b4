// Package heartbeat posts a converted pod's read throughput to the
// controller (contract.Heartbeat), from the counters of a metrics registry:
// the FUSE sidecar and the copy-mode init container both send it, so the
// Dataset's workers scale for the pods that read it.
package heartbeat

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/metrics"
)

// Sender posts the process's throughput to the controller.
type Sender struct {
	// URL is the controller's heartbeat URL; TokenFile the projected token
	// sent with each beat (re-read every time: tokens rotate).
	URL       string
	TokenFile string
	Interval  time.Duration
	// Registry holds the counters summed into each beat.
	Registry prometheus.Gatherer
	// Volumes are the pod's converted volumes (their Datasets are named).
	Volumes []contract.SidecarVolume
	// FirstReads, when set, are what the volumes read first.
	FirstReads *FirstReads
	// TLS verifies an https:// controller (nil: the system roots).
	// Insecure lets the token go to an http:// controller; without it a
	// beat to one is refused.
	TLS      *tls.Config
	Insecure bool
	client   *http.Client
}

// URL is the heartbeat URL of a controller base URL.
func URL(controller string) string {
	return strings.TrimSuffix(controller, "/") + contract.HeartbeatPath
}

// Run heartbeats until ctx is done; it returns true when the controller
// answered "exit". Failures are logged and retried at the next beat: the
// controller being away must not hurt the pod.
func (h *Sender) Run(ctx context.Context) bool {
	if h.client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		if h.TLS != nil {
			t.TLSClientConfig = h.TLS.Clone()
		}
		h.client = &http.Client{Timeout: max(h.Interval, 2*time.Second), Transport: t}
	}
	if strings.HasPrefix(h.URL, "http://") && h.TokenFile != "" && !h.Insecure {
		klog.ErrorS(nil, "Not sending heartbeats: the controller URL is plain http and the token goes only over TLS (give an https:// controller URL, or --insecure-workers)", "url", h.URL)
		<-ctx.Done()
		return false
	}
	var lastBytes int64
	last := time.Now()
	t := time.NewTicker(h.Interval)
	defer t.Stop()
	for first := true; ; first = false {
		// The first heartbeat goes at once: it may be what starts the
		// first cache worker of a Dataset scaled to zero.
		if !first {
			select {
			case <-ctx.Done():
				return false
			case <-t.C:
			}
		}
		now := time.Now()
		hb := h.beat(lastBytes, now.Sub(last))
		lastBytes, last = hb.BytesServed, now
		action, err := h.send(ctx, hb)
		if err != nil {
			klog.V(2).InfoS("Heartbeat failed", "url", h.URL, "err", err)
			continue
		}
		if action == contract.HeartbeatExit {
			klog.InfoS("The controller asked this process to exit")
			return true
		}
	}
}

// beat builds a heartbeat from the metrics registry.
func (h *Sender) beat(lastBytes int64, dt time.Duration) contract.Heartbeat {
	hb := contract.Heartbeat{PodUID: os.Getenv(contract.EnvPodUID), Namespace: os.Getenv(contract.EnvPodNamespace),
		Name: os.Getenv(contract.EnvPodName), IntervalSecs: dt.Seconds()}
	for _, v := range h.Volumes {
		if v.Dataset != "" {
			hb.Datasets = append(hb.Datasets, v.Dataset)
		} else {
			hb.Sources++
		}
	}
	sums := metrics.Sum(h.Registry, "sluice_bytes_served_total", "sluice_cache_hits_total", "sluice_cache_misses_total")
	hb.BytesServed = int64(sums["sluice_bytes_served_total"])
	hb.CacheHits = int64(sums["sluice_cache_hits_total"])
	hb.CacheMisses = int64(sums["sluice_cache_misses_total"])
	hb.FirstReads = h.FirstReads.snapshot()
	if dt > 0 {
		hb.BytesPerSec = float64(hb.BytesServed-lastBytes) / dt.Seconds()
	}
	return hb
}

func (h *Sender) send(ctx context.Context, hb contract.Heartbeat) (string, error) {
	body, err := json.Marshal(hb)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if h.TokenFile != "" {
		tok, err := os.ReadFile(h.TokenFile) // re-read: projected tokens rotate
		if err != nil {
			return "", fmt.Errorf("token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	var r contract.HeartbeatResponse
	if len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, &r); err != nil {
			return "", fmt.Errorf("answer %q: %w", data, err)
		}
	}
	return r.Action, nil
}
