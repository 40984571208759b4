package cachectl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
)

// ScrapeStats reads the cache statistics of the ready worker pods from
// their metrics endpoints: bytes held (memory + disk tiers) and the hit
// ratio, lookups answered from a tier against those fetched from the
// origin.
func ScrapeStats(hc *http.Client) func(ctx context.Context, pods []corev1.Pod) (WorkerStats, error) {
	return func(ctx context.Context, pods []corev1.Pod) (WorkerStats, error) {
		var ws WorkerStats
		var hits, fetches float64
		var errs []error
		for _, p := range pods {
			if p.Status.PodIP == "" || !podReady(&p) {
				continue
			}
			fams, err := scrape(ctx, hc, "http://"+net.JoinHostPort(p.Status.PodIP, strconv.Itoa(metricsPort))+"/metrics")
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s: %w", p.Name, err))
				continue
			}
			ws.CachedBytes += int64(sum(fams["sluice_cache_memory_bytes"]) + sum(fams["sluice_cache_disk_bytes"]))
			ws.ServedBytes += int64(sum(fams["sluice_bytes_served_total"]))
			hits += sum(fams["sluice_cache_hits_total"])
			fetches += sum(fams["sluice_fetch_duration_seconds"])
		}
		if hits+fetches > 0 {
			ws.HitRatio = int32(100 * hits / (hits + fetches))
		}
		return ws, errors.Join(errs...)
	}
}

func scrape(ctx context.Context, hc *http.Client, url string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// sum adds a family's samples (a histogram counts its observations).
func sum(f *dto.MetricFamily) float64 {
	if f == nil {
		return 0
	}
	var s float64
	for _, m := range f.GetMetric() {
		switch {
		case m.Gauge != nil:
			s += m.GetGauge().GetValue()
		case m.Counter != nil:
			s += m.GetCounter().GetValue()
		case m.Histogram != nil:
			s += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return s
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
