package driver

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
)

// Volume health (GET_VOLUME_HEALTH). Each serving process probes its
// source — the origin, or the cache workers — every healthEvery, even when
// nothing reads, and reports what the last probe found with its stats:
//   - INACCESSIBLE SourceUnreachable: the source did not answer and the
//     session holds no cached block that could stand in;
//   - DEGRADED ServingFromCache: the source did not answer, cached blocks
//     are still served;
//   - DEGRADED WorkersFailing: the source answers, but cache workers were
//     marked failed since the last probe (reads go to the other workers or
//     the origin fallback).
//
// A healthy volume reports no condition. The node answers
// NodeGetVolumeHealth from the session's stats; a session that does not
// answer is INACCESSIBLE SessionNotResponding. The kubelet asks every
// volumeStatsAggPeriod (the CSIVolumeHealth feature gate), so a change
// shows within that period plus healthEvery.

const (
	healthEvery   = 10 * time.Second
	healthTimeout = 5 * time.Second
)

// healthEntry is one adverse condition, as sessionStats carries it.
type healthEntry struct {
	Status  string `json:"status"` // csi.VolumeHealthErrorType name
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// healthProbe is a serving process's view of its own health.
type healthProbe struct {
	src      source.Source
	cached   func() int64 // bytes held in memory and on disk
	failures func() float64

	mu       sync.Mutex
	entries  []healthEntry
	lastFail float64
}

func newHealthProbe(src source.Source, cached func() int64, reg prometheus.Gatherer) *healthProbe {
	return &healthProbe{src: src, cached: cached, failures: func() float64 {
		return metrics.Sum(reg, "sluice_worker_failures_total")["sluice_worker_failures_total"]
	}}
}

// run probes until ctx ends.
func (h *healthProbe) run(ctx context.Context) {
	t := time.NewTicker(healthEvery)
	defer t.Stop()
	for {
		h.probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe asks the source once and records what it found.
func (h *healthProbe) probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, healthTimeout)
	_, err := h.src.Stat(pctx, "")
	cancel()
	if ctx.Err() != nil {
		return
	}
	fails := h.failures()
	var got []healthEntry
	switch {
	case err != nil && h.cached() > 0:
		got = []healthEntry{{csi.VolumeHealthErrorType_DEGRADED.String(), "ServingFromCache",
			fmt.Sprintf("%s does not answer (%v); cached blocks are still served", h.src.ID(), err)}}
	case err != nil:
		got = []healthEntry{{csi.VolumeHealthErrorType_INACCESSIBLE.String(), "SourceUnreachable",
			fmt.Sprintf("%s does not answer: %v", h.src.ID(), err)}}
	case fails > h.lastFail:
		got = []healthEntry{{csi.VolumeHealthErrorType_DEGRADED.String(), "WorkersFailing",
			fmt.Sprintf("%.0f cache worker failures in the last %s; reads go to the other workers or the origin",
				fails-h.lastFail, healthEvery)}}
	}
	h.mu.Lock()
	changed := !slices.Equal(got, h.entries)
	h.entries, h.lastFail = got, fails
	h.mu.Unlock()
	if changed {
		klog.InfoS("Volume health changed", "source", h.src.ID(), "conditions", got)
	}
}

// current is what the last probe found (nil: healthy).
func (h *healthProbe) current() []healthEntry {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.entries)
}

// volumeHealth turns a session's conditions into the CSI answer.
func volumeHealth(volumeID string, entries []healthEntry) *csi.VolumeHealth {
	vh := &csi.VolumeHealth{VolumeId: volumeID}
	for _, e := range entries {
		st, ok := csi.VolumeHealthErrorType_value[e.Status]
		if !ok {
			continue
		}
		vh.HealthStatuses = append(vh.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType(st), Reason: e.Reason, Message: e.Message})
	}
	return vh
}
