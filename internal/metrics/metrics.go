// Package metrics defines the Prometheus collectors that every sluice
// component shares. Collectors are registered on a registry the caller owns
// (no package-level state), and a nil *Cache is valid: every method is a
// no-op on it, so libraries can be used without metrics.
package metrics

import (
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Tier names used as the "tier" label.
const (
	TierMemory = "memory"
	TierDisk   = "disk"
	TierRemote = "remote"
)

// Cache holds the data-path collectors.
type Cache struct {
	BytesServed   prometheus.Counter
	OriginBytes   prometheus.Counter
	Hits          *prometheus.CounterVec
	Misses        *prometheus.CounterVec
	FetchLatency  prometheus.Histogram
	FetchErrors   prometheus.Counter
	MemoryBytes   prometheus.Gauge
	DiskBytes     prometheus.Gauge
	Evictions     *prometheus.CounterVec
	CorruptBlocks prometheus.Counter
	// DiskDrops counts disk copies dropped because the write-behind queue
	// was full (the reader was served from memory).
	DiskDrops prometheus.Counter
	// Hedges counts block requests sent to a second cache worker because
	// the first showed no sign of life in time; HedgeWins those the second
	// answered first.
	Hedges    prometheus.Counter
	HedgeWins prometheus.Counter
	// PeerBytes counts the bytes of OriginBytes a cache worker got from
	// a peer worker rather than the origin.
	PeerBytes prometheus.Counter
	// RangeReads counts reads that started a block's fetch and were
	// answered by the cache workers' range read before the whole block
	// arrived.
	RangeReads prometheus.Counter
	// WorkerFailures counts cache workers marked failed, by reason
	// (silent, slow, error).
	WorkerFailures *prometheus.CounterVec
}

// NewCache creates the data-path collectors and registers them on reg.
func NewCache(reg prometheus.Registerer) *Cache {
	m := &Cache{
		BytesServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_bytes_served_total", Help: "Bytes returned to readers."}),
		OriginBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_origin_bytes_total", Help: "Bytes fetched from the tier below the local cache (origin or cache workers; for a cache worker, peers included: sluice_peer_bytes_total)."}),
		Hits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_cache_hits_total", Help: "Block lookups answered by a cache tier."}, []string{"tier"}),
		Misses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_cache_misses_total", Help: "Block lookups a cache tier could not answer."}, []string{"tier"}),
		FetchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sluice_fetch_duration_seconds", Help: "Latency of block fetches from the tier below.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		FetchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_fetch_errors_total", Help: "Block fetches that failed after retries."}),
		MemoryBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_cache_memory_bytes", Help: "Bytes held by the memory tier."}),
		DiskBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_cache_disk_bytes", Help: "Bytes held by the disk tier."}),
		Evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_cache_evictions_total", Help: "Blocks evicted from a tier."}, []string{"tier"}),
		CorruptBlocks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_cache_corrupt_blocks_total", Help: "Disk blocks whose checksum did not match (re-fetched)."}),
		DiskDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_cache_disk_write_drops_total", Help: "Disk copies of fetched blocks dropped because the write-behind queue was full."}),
		Hedges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_worker_hedges_total", Help: "Block requests also sent to the next cache worker because the first showed no sign of life in time."}),
		HedgeWins: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_worker_hedge_wins_total", Help: "Hedged block requests that the second cache worker answered first."}),
		PeerBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_peer_bytes_total", Help: "Bytes a cache worker fetched from a peer worker instead of the origin."}),
		RangeReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_range_reads_total", Help: "Reads answered by a cache worker's range read before the whole block arrived."}),
		WorkerFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_worker_failures_total", Help: "Cache workers marked failed, by reason (silent, slow, error)."}, []string{"reason"}),
	}
	// Every known label value is exported from the start (at 0), so that
	// dashboards and alerts see the series before the first event.
	for _, tier := range []string{TierMemory, TierDisk} {
		m.Hits.WithLabelValues(tier)
		m.Misses.WithLabelValues(tier)
		m.Evictions.WithLabelValues(tier)
	}
	for _, reason := range []string{"silent", "slow", "error"} {
		m.WorkerFailures.WithLabelValues(reason)
	}
	if reg != nil {
		reg.MustRegister(m.BytesServed, m.OriginBytes, m.Hits, m.Misses, m.FetchLatency, m.FetchErrors,
			m.MemoryBytes, m.DiskBytes, m.Evictions, m.CorruptBlocks, m.DiskDrops, m.Hedges, m.HedgeWins, m.PeerBytes, m.RangeReads,
			m.WorkerFailures)
	}
	return m
}

// RangeServed counts a read answered by a worker's range read.
func (m *Cache) RangeServed() {
	if m != nil {
		m.RangeReads.Inc()
	}
}

// Served counts bytes returned to a reader.
func (m *Cache) Served(n int) {
	if m != nil {
		m.BytesServed.Add(float64(n))
	}
}

// Hit counts a hit in tier.
func (m *Cache) Hit(tier string) {
	if m != nil {
		m.Hits.WithLabelValues(tier).Inc()
	}
}

// Miss counts a miss in tier.
func (m *Cache) Miss(tier string) {
	if m != nil {
		m.Misses.WithLabelValues(tier).Inc()
	}
}

// Fetched records one fetch from the tier below.
func (m *Cache) Fetched(n int, d time.Duration, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.FetchErrors.Inc()
		return
	}
	m.OriginBytes.Add(float64(n))
	m.FetchLatency.Observe(d.Seconds())
}

// Evicted counts an eviction from tier.
func (m *Cache) Evicted(tier string) {
	if m != nil {
		m.Evictions.WithLabelValues(tier).Inc()
	}
}

// Corrupt counts a block that failed its checksum.
func (m *Cache) Corrupt() {
	if m != nil {
		m.CorruptBlocks.Inc()
	}
}

// DiskDropped counts a disk copy dropped by a full write-behind queue.
func (m *Cache) DiskDropped() {
	if m != nil {
		m.DiskDrops.Inc()
	}
}

// Hedged counts a hedged request; won says the second worker answered first.
func (m *Cache) Hedged(won bool) {
	if m == nil {
		return
	}
	m.Hedges.Inc()
	if won {
		m.HedgeWins.Inc()
	}
}

// PeerFetched counts n bytes a worker got from a peer.
func (m *Cache) PeerFetched(n int) {
	if m == nil {
		return
	}
	m.PeerBytes.Add(float64(n))
}

// WorkerFailed counts a cache worker marked failed for reason.
func (m *Cache) WorkerFailed(reason string) {
	if m != nil {
		m.WorkerFailures.WithLabelValues(reason).Inc()
	}
}

// SetSizes publishes the tiers' current sizes.
func (m *Cache) SetSizes(memory, disk int64) {
	if m != nil {
		m.MemoryBytes.Set(float64(memory))
		m.DiskBytes.Set(float64(disk))
	}
}

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Serve exposes reg at http://addr/metrics until the returned server is
// closed. It returns once the listener is bound, so a bad address is
// reported to the caller.
func Serve(addr string, reg *prometheus.Registry) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln) // returns ErrServerClosed once the caller closes srv
	return srv, nil
}

// Sum adds up every series of each named counter or gauge in g (0 for a
// name g does not have).
func Sum(g prometheus.Gatherer, names ...string) map[string]float64 {
	out := map[string]float64{}
	fams, err := g.Gather()
	if err != nil {
		return out
	}
	for _, f := range fams {
		for _, n := range names {
			if f.GetName() != n {
				continue
			}
			for _, m := range f.GetMetric() {
				out[n] += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return out
}
