package heartbeat

import (
	"sync"

	"github.com/sluice-dev/sluice/internal/contract"
)

// FirstReads gathers what a pod's volumes read first, per Dataset, for
// the heartbeats (contract.Heartbeat.FirstReads). Each volume adds its
// reader's list once it is open; a nil *FirstReads reports nothing. Safe
// for concurrent use.
type FirstReads struct {
	mu sync.Mutex
	of map[string][]func() []string
}

// Add registers fn, the first reads of a volume of dataset.
func (f *FirstReads) Add(dataset string, fn func() []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.of == nil {
		f.of = map[string][]func() []string{}
	}
	f.of[dataset] = append(f.of[dataset], fn)
}

// snapshot is every Dataset's first reads (volumes of one Dataset one
// after another, each object once), at most contract.FirstReadsPerClient
// each; nil when there are none.
func (f *FirstReads) snapshot() map[string][]string {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out map[string][]string
	for ds, fns := range f.of {
		var paths []string
		for _, fn := range fns {
			for _, p := range fn() {
				paths = contract.AddFirstRead(paths, p)
			}
		}
		if len(paths) > 0 {
			if out == nil {
				out = map[string][]string{}
			}
			out[ds] = paths
		}
	}
	return out
}
