// Package cachectl is sluice's control plane (`sluice controller`): Dataset
// reconciliation, cache-worker scaling on the sidecars' throughput, access,
// preload, and the reaper that ends FUSE sidecars once their pod's app
// containers are done. This file holds the scaling rule; demand.go sums the
// heartbeats it runs on, reaper.go decides when a sidecar may exit, and
// heartbeat.go is the HTTP endpoint the sidecars report to.
package cachectl

import (
	"math"
	"time"
)

// ScalerConfig is one Dataset's scaling policy (from its spec.cache).
type ScalerConfig struct {
	MinWorkers, MaxWorkers int32
	// TargetPerWorker is the client throughput, bytes/s, one worker serves.
	TargetPerWorker float64
	// ScaleDownDelay is how long demand must stay lower before workers go.
	ScaleDownDelay time.Duration
}

// Scaler turns a Dataset's aggregate client throughput into a desired
// worker count: clamp(ceil(demand / target), min, max), scaling up at once
// and down only after ScaleDownDelay of lower demand. With MinWorkers 0 any
// demand at all asks for one worker (scale from zero). The zero value is
// ready; a Scaler is not safe for concurrent use (one per Dataset, owned by
// its reconciler).
type Scaler struct {
	// neededSince is the last time demand justified the current count.
	neededSince time.Time
	// clientRate is the highest throughput per client seen within
	// clientRateMemory (at clientRateAt), for clients that are coming.
	clientRate   float64
	clientRateAt time.Time
}

// clientRateMemory is how long a per-client throughput stands for the
// Dataset's clients when none higher is seen.
const clientRateMemory = time.Hour

// observe notes the throughput per client of demand over clients.
func (s *Scaler) observe(now time.Time, demand float64, clients int) {
	if clients <= 0 || demand <= 0 {
		return
	}
	if r := demand / float64(clients); r >= s.clientRate || now.Sub(s.clientRateAt) > clientRateMemory {
		s.clientRate, s.clientRateAt = r, now
	}
}

// perClient is the throughput a coming client is counted at: what the
// Dataset's clients read per client lately, else a defaultClientsPerWorker
// share of a worker.
func (s *Scaler) perClient(cfg ScalerConfig) float64 {
	if s.clientRate > 0 {
		return s.clientRate
	}
	return cfg.TargetPerWorker / defaultClientsPerWorker
}

// Desired returns the worker count for demand (bytes/s from clients pods)
// given the current count at time now. A client that reads nothing yet
// (it may be waiting for a first worker) still asks for one.
func (s *Scaler) Desired(cfg ScalerConfig, now time.Time, current int32, demand float64, clients int) int32 {
	want := cfg.want(demand, clients)
	if want >= current || s.neededSince.IsZero() {
		s.neededSince = now
		if want < current {
			return current // first sighting of lower demand: start the delay
		}
		return want
	}
	if now.Sub(s.neededSince) < cfg.ScaleDownDelay {
		return current
	}
	s.neededSince = now
	return want
}

func (cfg ScalerConfig) want(demand float64, clients int) int32 {
	var n int32
	if demand > 0 || clients > 0 {
		if cfg.TargetPerWorker > 0 {
			n = int32(min(math.Ceil(demand/cfg.TargetPerWorker), math.MaxInt32))
		}
		n = max(n, 1)
	}
	n = max(n, cfg.MinWorkers)
	if cfg.MaxWorkers > 0 {
		n = min(n, cfg.MaxWorkers)
	}
	return n
}
