package cachectl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
)

// ScrapeStats reads the cache statistics of the ready worker pods that
// are not terminating from their metrics endpoints, all at once: bytes
// held (memory + disk tiers) and the hit ratio, lookups answered from a
// tier against those fetched from the origin. A reconcile waits for it,
// so a worker that does not answer costs at most scrapeTimeout (a pod
// being torn down can leave connects hanging).
func ScrapeStats(hc *http.Client) func(ctx context.Context, pods []corev1.Pod) (WorkerStats, error) {
	return func(ctx context.Context, pods []corev1.Pod) (WorkerStats, error) {
		type result struct {
			fams map[string]*dto.MetricFamily
			err  error
		}
		results := make([]result, len(pods))
		var wg sync.WaitGroup
		for i, p := range pods {
			if p.Status.PodIP == "" || !podReady(&p) || p.DeletionTimestamp != nil {
				continue
			}
			wg.Go(func() {
				fams, err := scrape(ctx, hc, "http://"+net.JoinHostPort(p.Status.PodIP, strconv.Itoa(metricsPort))+"/metrics")
				if err != nil {
					err = fmt.Errorf("pod %s: %w", p.Name, err)
				}
				results[i] = result{fams, err}
			})
		}
		wg.Wait()
		var ws WorkerStats
		var hits, fetches float64
		var errs []error
		for _, r := range results {
			if r.err != nil {
				errs = append(errs, r.err)
				continue
			}
			fams := r.fams
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

// scrapeTimeout bounds one scrape of a worker's metrics.
const scrapeTimeout = 2 * time.Second

func scrape(ctx context.Context, hc *http.Client, url string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
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

// WorkerStats is what the workers report about their caches.
type WorkerStats struct {
	CachedBytes int64
	HitRatio    int32 // percent
	// ServedBytes is the bytes the workers have served (their counters'
	// sum; a new worker starts at 0).
	ServedBytes int64
}

// workerStats scrapes the ready workers of ds (nil when there are none or
// no scraper) and returns, with them, the rate at which they serve bytes
// since the previous scrape.
func (r *DatasetReconciler) workerStats(ctx context.Context, ds *v1alpha1.Dataset, sts *appsv1.StatefulSet, pods []corev1.Pod) (*WorkerStats, float64) {
	if r.Stats == nil || sts.Status.ReadyReplicas == 0 {
		return nil, 0
	}
	ws, err := r.Stats(ctx, pods)
	if err != nil { // a partial sum would fake a rate: skip this sample
		klog.V(2).InfoS("Reading the workers' statistics failed", "dataset", klog.KObj(ds), "err", err)
		return nil, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.served == nil {
		r.served = map[types.NamespacedName]servedSample{}
	}
	key := client.ObjectKeyFromObject(ds)
	rate := r.served[key].rate(ws.ServedBytes, r.now())
	r.served[key] = servedSample{bytes: ws.ServedBytes, at: r.now()}
	return &ws, rate
}

type servedSample struct {
	bytes int64
	at    time.Time
}

// rate is bytes/s from s to (bytes, now); 0 without a previous sample or
// when the counters went back (a worker restarted or went away).
func (s servedSample) rate(bytes int64, now time.Time) float64 {
	dt := now.Sub(s.at).Seconds()
	if s.at.IsZero() || dt <= 0 || bytes < s.bytes {
		return 0
	}
	return float64(bytes-s.bytes) / dt
}

// workerPods lists ds's worker pods from the API server (none when no
// worker is wanted or Pods is unset).
func (r *DatasetReconciler) workerPods(ctx context.Context, ds *v1alpha1.Dataset, current int32) []corev1.Pod {
	if r.Pods == nil || current <= 0 {
		return nil
	}
	pods := &corev1.PodList{}
	if err := r.Pods.List(ctx, pods, client.InNamespace(ds.Namespace), client.MatchingLabels(selectorLabels(ds))); err != nil {
		klog.V(2).InfoS("Listing the workers failed", "dataset", klog.KObj(ds), "err", err)
		return nil
	}
	return pods.Items
}

// workerFailure is the last termination message of a worker container
// that exited with an error, if any (at most 512 bytes).
func workerFailure(pods []corev1.Pod) string {
	for _, p := range pods {
		for _, c := range p.Status.ContainerStatuses {
			for _, t := range []*corev1.ContainerStateTerminated{c.State.Terminated, c.LastTerminationState.Terminated} {
				if t != nil && t.ExitCode != 0 && strings.TrimSpace(t.Message) != "" {
					msg := strings.TrimSpace(t.Message)
					if len(msg) > 512 {
						msg = msg[len(msg)-512:]
					}
					return fmt.Sprintf("worker %s exited %d: %s", p.Name, t.ExitCode, msg)
				}
			}
		}
	}
	return ""
}
