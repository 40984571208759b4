package driver

import (
	"context"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/driver/state"
)

// volumeCollector exports the health of every volume the node serves, as
// NodeGetVolumeHealth answers it, asked of each session when Prometheus
// scrapes (at most scrapeTimeout each):
//   - sluice_csi_volume_abnormal{volume_id}: 1 when the volume reports a
//     condition (or its session does not answer), else 0;
//   - sluice_csi_volume_condition{volume_id, status, reason}: 1 per condition;
//   - sluice_csi_sessions: the FUSE sessions the node runs.
//
// Kubernetes v1.37's kubelet reports volume health only in the pod's
// status, not as a metric; this is what the alerts watch.
type volumeCollector struct {
	sessions *sessionManager
}

const scrapeTimeout = 2 * time.Second

var (
	descAbnormal = prometheus.NewDesc("sluice_csi_volume_abnormal",
		"1 when the volume reports an adverse condition (NodeGetVolumeHealth), else 0.", []string{"volume_id"}, nil)
	descCondition = prometheus.NewDesc("sluice_csi_volume_condition",
		"The volume's adverse conditions: status INACCESSIBLE or DEGRADED, and a reason.", []string{"volume_id", "status", "reason"}, nil)
	descSessions = prometheus.NewDesc("sluice_csi_sessions", "FUSE sessions the node serves.", nil, nil)
)

func (c *volumeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descAbnormal
	ch <- descCondition
	ch <- descSessions
}

func (c *volumeCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.sessions
	m.mu.Lock()
	recs := make([]state.Session, 0, len(m.sessions))
	for _, s := range m.sessions {
		recs = append(recs, s.rec)
	}
	m.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(len(recs)))
	for i := range recs {
		rec := &recs[i]
		ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
		st, err := m.launcher.stats(ctx, rec)
		cancel()
		if err != nil {
			st.Health = []healthEntry{{Status: csi.VolumeHealthErrorType_INACCESSIBLE.String(), Reason: "SessionNotResponding"}}
		}
		seen := map[string]bool{}
		for _, r := range rec.Refs {
			if seen[r.VolumeID] {
				continue
			}
			seen[r.VolumeID] = true
			abnormal := 0.0
			for _, e := range st.Health {
				abnormal = 1
				ch <- prometheus.MustNewConstMetric(descCondition, prometheus.GaugeValue, 1, r.VolumeID, e.Status, e.Reason)
			}
			ch <- prometheus.MustNewConstMetric(descAbnormal, prometheus.GaugeValue, abnormal, r.VolumeID)
		}
	}
}
