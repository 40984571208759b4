package cachectl

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
)

// DatasetCollector exports each Dataset's status as gauges, read from the
// manager's cache at scrape time (so a deleted Dataset leaves no series):
// the dashboard's worker count against demand and the alerts on saturated
// workers and a low hit ratio come from these.
type DatasetCollector struct {
	Reader client.Reader
}

var datasetLabels = []string{"namespace", "dataset"}

var (
	descWorkers = prometheus.NewDesc("sluice_dataset_workers",
		"Cache workers that are ready.", datasetLabels, nil)
	descDesired = prometheus.NewDesc("sluice_dataset_workers_desired",
		"Cache workers the scaler wants.", datasetLabels, nil)
	descMax = prometheus.NewDesc("sluice_dataset_workers_max",
		"The Dataset's maxWorkers (defaults applied).", datasetLabels, nil)
	descTarget = prometheus.NewDesc("sluice_dataset_target_bytes_per_worker",
		"Client throughput, bytes/s, one cache worker is sized for.", datasetLabels, nil)
	descDemand = prometheus.NewDesc("sluice_dataset_demand_bytes_per_second",
		"Client throughput the sidecars report, bytes/s.", datasetLabels, nil)
	descClients = prometheus.NewDesc("sluice_dataset_clients",
		"Sidecars that reported within the demand window.", datasetLabels, nil)
	descCached = prometheus.NewDesc("sluice_dataset_cached_bytes",
		"Bytes the cache workers hold.", datasetLabels, nil)
	descHitRatio = prometheus.NewDesc("sluice_dataset_hit_ratio",
		"Share (0 to 1) of the workers' block lookups answered from their cache.", datasetLabels, nil)
)

// Describe implements prometheus.Collector.
func (c *DatasetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWorkers, descDesired, descMax, descTarget, descDemand, descClients, descCached, descHitRatio} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *DatasetCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list := &v1alpha1.DatasetList{}
	if err := c.Reader.List(ctx, list); err != nil {
		klog.V(2).InfoS("Listing Datasets for metrics failed", "err", err)
		return
	}
	for i := range list.Items {
		ds := &list.Items[i]
		st, cfg := ds.Status, Scaling(ds)
		for _, v := range []struct {
			d *prometheus.Desc
			v float64
		}{
			{descWorkers, float64(st.ReadyWorkers)}, {descDesired, float64(st.DesiredWorkers)},
			{descMax, float64(cfg.MaxWorkers)}, {descTarget, cfg.TargetPerWorker},
			{descDemand, float64(st.Throughput)}, {descClients, float64(st.Clients)},
			{descCached, float64(st.CachedBytes)}, {descHitRatio, float64(st.HitRatio) / 100},
		} {
			ch <- prometheus.MustNewConstMetric(v.d, prometheus.GaugeValue, v.v, ds.Namespace, ds.Name)
		}
	}
}
