package source

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLimiterAIMD: throttling answers halve the limit once per round,
// good answers raise it by about one per round, never past the maximum.
func TestLimiterAIMD(t *testing.T) {
	tests := []struct {
		name   string
		steps  func(l *Slots)
		wantLo int
		wantHi int
	}{
		{name: "starts at the maximum", steps: func(*Slots) {}, wantLo: 16, wantHi: 16},
		{name: "one throttle halves", steps: func(l *Slots) { cycle(t, l, true) }, wantLo: 8, wantHi: 8},
		{name: "a storm of one round halves once", steps: func(l *Slots) {
			start := time.Now().Add(-time.Millisecond)
			for range 8 {
				mustAcquire(t, l, false)
			}
			for range 8 {
				l.release(start, true, true)
			}
		}, wantLo: 8, wantHi: 8},
		{name: "rounds of throttles go to one", steps: func(l *Slots) {
			for range 10 {
				cycle(t, l, true)
			}
		}, wantLo: 1, wantHi: 1},
		{name: "good answers raise it back", steps: func(l *Slots) {
			for range 10 {
				cycle(t, l, true)
			}
			for range 30 {
				cycle(t, l, false)
			}
		}, wantLo: 6, wantHi: 9},
		{name: "never past the maximum", steps: func(l *Slots) {
			for range 100 {
				cycle(t, l, false)
			}
		}, wantLo: 16, wantHi: 16},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := newLimiter("test", 16)
			tc.steps(l)
			if got := l.Limit(); got < tc.wantLo || got > tc.wantHi {
				t.Errorf("limit %d, want %d..%d", got, tc.wantLo, tc.wantHi)
			}
		})
	}
}

func cycle(t *testing.T, l *Slots, throttled bool) {
	t.Helper()
	mustAcquire(t, l, false)
	start := time.Now()
	time.Sleep(time.Microsecond) // a later round than the last decrease
	l.release(start, throttled, true)
}

func mustAcquire(t *testing.T, l *Slots, readahead bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := l.Acquire(ctx, readahead); err != nil {
		t.Fatalf("acquire: %v", err)
	}
}

// TestThrottleLowersInFlight: a source that answers SlowDown to every
// request while more than 4 are in flight ends up with at most a few in
// flight, and every call succeeds.
func TestThrottleLowersInFlight(t *testing.T) {
	f := &crowdSource{max: 4}
	s := WithRetry(f, RetryPolicy{Budget: 20 * time.Second, BaseDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond,
		TTFB: time.Second, MaxInFlight: 32})
	errs := make(chan error, 64)
	for range 64 {
		go func() { errs <- s.ReadAt(context.Background(), "f", "v", make([]byte, 1), 0) }()
	}
	for range 64 {
		if err := <-errs; err != nil {
			t.Fatalf("ReadAt: %v", err)
		}
	}
	if lim := s.(*retrySource).limit.Limit(); lim > 8 {
		t.Errorf("limit %d after a throttling storm; want it lowered toward 4", lim)
	}
	if f.throttled.Load() == 0 {
		t.Error("the source never throttled: the test did not exercise the limiter")
	}
}

func TestThrottledIsTransient(t *testing.T) {
	err := fmt.Errorf("s3 get: %w (SlowDown)", ErrThrottled)
	if IsPermanent(err) || !errors.Is(err, ErrThrottled) {
		t.Fatalf("throttling must be transient and recognisable")
	}
}

// crowdSource throttles every read that arrives while max are in flight;
// each read takes a millisecond.
type crowdSource struct {
	max       int64
	inFlight  atomic.Int64
	throttled atomic.Int64
}

func (c *crowdSource) ID() string { return "crowd" }
func (c *crowdSource) List(context.Context, string) ([]Entry, error) {
	return nil, nil
}
func (c *crowdSource) Stat(context.Context, string) (Entry, error) { return Entry{}, nil }
func (c *crowdSource) ReadAt(ctx context.Context, p, v string, buf []byte, off int64) error {
	defer c.inFlight.Add(-1)
	if c.inFlight.Add(1) > c.max {
		c.throttled.Add(1)
		return fmt.Errorf("503: %w", ErrThrottled)
	}
	time.Sleep(time.Millisecond)
	return nil
}

func TestSlotsServeDemandFirst(t *testing.T) {
	s := NewSlots(1)
	ctx := context.Background()
	if err := s.Acquire(ctx, false); err != nil { // the only slot is taken
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
			if err := s.Acquire(ctx, readahead); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			s.Release()
		}()
		waitQueued(t, s, queued+1)
		queued++
	}
	start("ahead-1", true)
	start("ahead-2", true)
	start("demand-1", false)
	start("demand-2", false)
	s.Release()
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
	if s.inFlight != 0 {
		t.Errorf("%d slots taken at the end, want 0", s.inFlight)
	}
}

// waitQueued waits until n acquirers wait for a slot: the queue, not a
// sleep, orders the goroutines.
func waitQueued(t *testing.T, s *Slots, n int) {
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

func TestSlotsCancelledWaiterGivesNothingAway(t *testing.T) {
	s := NewSlots(1)
	if err := s.Acquire(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Acquire(ctx, true); err == nil {
		t.Fatal("acquire succeeded with no free slot")
	}
	s.Release()
	if s.inFlight != 0 || len(s.ahead) != 0 || len(s.demand) != 0 {
		t.Fatalf("after cancel and release: %d taken, waiters %d/%d; want 0, 0/0", s.inFlight, len(s.demand), len(s.ahead))
	}
}
