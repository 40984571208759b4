package cacheserver

import (
	"slices"
	"sync"

	"github.com/sluice-dev/sluice/internal/contract"
)

// firstReads keeps the first contract.FirstReadsPerClient objects a
// Source read, in the order of their first read (a heartbeat reports
// them; the controller warms the next burst's workers with them).
type firstReads struct {
	mu    sync.Mutex
	paths []string
}

// note records p unless it is already recorded or the list is full.
func (f *firstReads) note(p string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.paths) < contract.FirstReadsPerClient && !slices.Contains(f.paths, p) {
		f.paths = append(f.paths, p)
	}
}

func (f *firstReads) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.paths)
}

// FirstReads returns the first objects this Source read blocks of, in
// order, at most contract.FirstReadsPerClient.
func (s *Source) FirstReads() []string { return s.first.list() }
