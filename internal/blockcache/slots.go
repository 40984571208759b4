package blockcache

import (
	"context"
	"sync"
)

// fetchSlots bounds parallel fetches from the tier below and hands a free
// slot to a waiting demand fetch before any waiting readahead fetch, so a
// reader's first block is not queued behind every client's readahead.
type fetchSlots struct {
	mu     sync.Mutex
	free   int
	demand []chan struct{}
	ahead  []chan struct{}
}

func newFetchSlots(n int) *fetchSlots { return &fetchSlots{free: n} }

// acquire takes a slot or returns ctx's error.
func (s *fetchSlots) acquire(ctx context.Context, readahead bool) error {
	s.mu.Lock()
	if s.free > 0 && (readahead && len(s.demand) == 0 && len(s.ahead) == 0 || !readahead && len(s.demand) == 0) {
		s.free--
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	if readahead {
		s.ahead = append(s.ahead, ch)
	} else {
		s.demand = append(s.demand, ch)
	}
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if removed := remove(&s.demand, ch) || remove(&s.ahead, ch); !removed {
		// Granted while giving up: pass the slot on.
		s.releaseLocked()
	}
	return ctx.Err()
}

// release returns a slot, waking a demand waiter first.
func (s *fetchSlots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked()
}

func (s *fetchSlots) releaseLocked() {
	for _, q := range []*[]chan struct{}{&s.demand, &s.ahead} {
		if len(*q) > 0 {
			ch := (*q)[0]
			*q = (*q)[1:]
			close(ch)
			return
		}
	}
	s.free++
}

func remove(q *[]chan struct{}, ch chan struct{}) bool {
	for i, c := range *q {
		if c == ch {
			*q = append((*q)[:i], (*q)[i+1:]...)
			return true
		}
	}
	return false
}
