package blockcache

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestFetchSlotsServeDemandFirst(t *testing.T) {
	s := newFetchSlots(1)
	ctx := context.Background()
	if err := s.acquire(ctx, false); err != nil { // the only slot is taken
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	queued := 0
	start := func(name string, readahead bool) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.acquire(ctx, readahead); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			s.release()
		}()
		waitQueued(t, s, queued+1)
		queued++
	}
	start("ahead-1", true)
	start("ahead-2", true)
	start("demand-1", false)
	start("demand-2", false)
	s.release()
	wg.Wait()
	want := []string{"demand-1", "demand-2", "ahead-1", "ahead-2"}
	if len(order) != len(want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("order %v, want %v", order, want)
		}
	}
	if s.free != 1 {
		t.Errorf("%d free slots at the end, want 1", s.free)
	}
}

// waitQueued waits until n acquirers wait for a slot: the queue, not a
// sleep, orders the goroutines.
func waitQueued(t *testing.T, s *fetchSlots, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		q := len(s.demand) + len(s.ahead)
		s.mu.Unlock()
		if q >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFetchSlotsCancelledWaiterGivesNothingAway(t *testing.T) {
	s := newFetchSlots(1)
	if err := s.acquire(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.acquire(ctx, true); err == nil {
		t.Fatal("acquire succeeded with no free slot")
	}
	s.release()
	if s.free != 1 || len(s.ahead) != 0 || len(s.demand) != 0 {
		t.Fatalf("after cancel and release: free %d, waiters %d/%d; want 1, 0/0", s.free, len(s.demand), len(s.ahead))
	}
}
