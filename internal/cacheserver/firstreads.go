package cacheserver

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sluice-dev/sluice/internal/contract"
)

// firstReads keeps the first contract.FirstReadsPerClient objects a
// Source read, in the order of their first read (a heartbeat reports
// them; the controller warms the next burst's workers with them).
type firstReads struct {
	full  atomic.Bool // every read after the first few skips the lock
	mu    sync.Mutex
	paths []string
}

// note records p unless it is already recorded or the list is full.
func (f *firstReads) note(p string) {
	if f.full.Load() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paths = contract.AddFirstRead(f.paths, p)
	f.full.Store(len(f.paths) == contract.FirstReadsPerClient)
}

func (f *firstReads) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.paths)
}

// FirstReads returns the first objects this Source read blocks of, in
// order, at most contract.FirstReadsPerClient.
func (s *Source) FirstReads() []string { return s.first.list() }
