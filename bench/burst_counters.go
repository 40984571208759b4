package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"k8s.io/klog/v2"
)

// BurstCounters say where a sluice run's origin bytes went: the workers'
// counters (each worker is fresh per run) and the mounts' summed over the
// mounts, read just before they stop.
type BurstCounters struct {
	// WorkerOriginBytes is each worker's bytes from the origin, and
	// WorkerPeerBytes each worker's bytes from its peers.
	WorkerOriginBytes []int64 `json:"workerOriginBytes"`
	WorkerPeerBytes   []int64 `json:"workerPeerBytes"`
	// DiskWriteDrops are blocks whose disk copy a worker dropped (its
	// write-behind queue was full); MemoryEvictions and DiskEvictions are
	// the workers' evictions per tier.
	DiskWriteDrops  int64 `json:"diskWriteDrops"`
	MemoryEvictions int64 `json:"memoryEvictions"`
	DiskEvictions   int64 `json:"diskEvictions"`
	// Hedges, HedgeWins and WorkerFailures are the mounts': block
	// requests also sent to the next worker, those it won, and workers
	// marked failed by reason.
	Hedges         int64            `json:"hedges"`
	HedgeWins      int64            `json:"hedgeWins"`
	WorkerFailures map[string]int64 `json:"workerFailures,omitempty"`
	RangeReads     int64            `json:"rangeReads"`
}

var workerSeries = []string{"sluice_origin_bytes_total", "sluice_peer_bytes_total", "sluice_cache_evictions_total",
	"sluice_cache_disk_write_drops_total"}

var mountSeries = []string{"sluice_worker_hedges_total", "sluice_worker_hedge_wins_total",
	"sluice_worker_failures_total", "sluice_range_reads_total"}

// addWorker adds one worker's series.
func (c *BurstCounters) addWorker(m map[string]float64) {
	peer := int64(m["sluice_peer_bytes_total"])
	c.WorkerOriginBytes = append(c.WorkerOriginBytes, int64(m["sluice_origin_bytes_total"])-peer)
	c.WorkerPeerBytes = append(c.WorkerPeerBytes, peer)
	c.DiskWriteDrops += int64(m["sluice_cache_disk_write_drops_total"])
	c.MemoryEvictions += int64(m[`sluice_cache_evictions_total{tier="memory"}`])
	c.DiskEvictions += int64(m[`sluice_cache_evictions_total{tier="disk"}`])
}

// addMount adds one mount's series.
func (c *BurstCounters) addMount(m map[string]float64) {
	c.Hedges += int64(m["sluice_worker_hedges_total"])
	c.HedgeWins += int64(m["sluice_worker_hedge_wins_total"])
	c.RangeReads += int64(m["sluice_range_reads_total"])
	for k, v := range m {
		reason, ok := strings.CutPrefix(k, `sluice_worker_failures_total{reason="`)
		if ok && v > 0 {
			if c.WorkerFailures == nil {
				c.WorkerFailures = map[string]int64{}
			}
			c.WorkerFailures[strings.TrimSuffix(reason, `"}`)] += int64(v)
		}
	}
}

// printBurstCounters writes one line per sluice row under the table.
func printBurstCounters(out io.Writer, results []BurstResult) {
	for _, r := range results {
		c := r.Counters
		if c == nil {
			continue
		}
		var fails []string
		for _, k := range slices.Sorted(maps.Keys(c.WorkerFailures)) {
			fails = append(fails, fmt.Sprintf("%s %d", k, c.WorkerFailures[k]))
		}
		fmt.Fprintf(out, "%s N=%d: workers' bytes from the origin %v, from peers %v; "+
			"disk-write drops %d; evictions memory %d, disk %d; mounts hedged %d (won %d), range reads %d, marked workers failed [%s]\n",
			r.Mode, r.Clients, c.WorkerOriginBytes, c.WorkerPeerBytes, c.DiskWriteDrops,
			c.MemoryEvictions, c.DiskEvictions, c.Hedges, c.HedgeWins, c.RangeReads, strings.Join(fails, ", "))
	}
}

// counters reads the workers' series and adds the mounts' of the last
// run; nil when a worker cannot be read.
func (e *burstEnv) counters() *BurstCounters {
	c := &BurstCounters{}
	for _, w := range e.workers {
		m, err := scrapeMetrics(w.metrics, workerSeries...)
		if err != nil {
			klog.InfoS("Reading a worker's counters", "worker", w.name, "err", err)
			return nil
		}
		c.addWorker(m)
	}
	for _, m := range e.mountCounters {
		c.addMount(m)
	}
	return c
}
