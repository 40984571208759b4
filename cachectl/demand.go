package cachectl

import (
	"sync"
	"time"
)

// Demand sums the client throughput each Dataset sees, from the sidecars'
// heartbeats: the latest rate of every pod that reported within Window.
// Safe for concurrent use (the heartbeat handler writes, reconcilers read).
type Demand struct {
	// Window is how long a pod's last report counts (default 30 s: a few
	// missed heartbeats, not a dead pod forever).
	Window time.Duration

	mu   sync.Mutex
	pods map[string]report // by pod UID
}

type report struct {
	datasets []string
	rate     float64
	at       time.Time
	// first are the first objects the pod read, per dataset.
	first map[string][]string
}

// Record stores a pod's latest throughput over its datasets and the first
// objects it read of each (firstReads, by dataset; see FirstReadsOf).
func (d *Demand) Record(podUID string, datasets []string, bytesPerSec float64, firstReads map[string][]string, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pods == nil {
		d.pods = map[string]report{}
	}
	d.pods[podUID] = report{datasets: append([]string(nil), datasets...), rate: max(bytesPerSec, 0), at: now,
		first: firstReads}
}

// Heard reports whether pod podUID has reported within Window.
func (d *Demand) Heard(podUID string, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.pods[podUID]
	return ok && now.Sub(r.at) <= d.window()
}

func (d *Demand) window() time.Duration {
	if d.Window <= 0 {
		return 30 * time.Second
	}
	return d.Window
}

// Of returns the aggregate throughput of dataset ("namespace/name") and the
// number of pods reading it. A pod reading several datasets counts its rate
// against each (it cannot say which one served the bytes).
func (d *Demand) Of(dataset string, now time.Time) (bytesPerSec float64, pods int) {
	window := d.window()
	d.mu.Lock()
	defer d.mu.Unlock()
	for uid, r := range d.pods {
		if now.Sub(r.at) > window {
			delete(d.pods, uid)
			continue
		}
		for _, ds := range r.datasets {
			if ds == dataset {
				bytesPerSec += r.rate
				pods++
				break
			}
		}
	}
	return bytesPerSec, pods
}
