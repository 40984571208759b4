package source

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// TestLimiterAIMD: throttling answers halve the limit once per round,
// good answers raise it by about one per round, never past the maximum.
func TestLimiterAIMD(t *testing.T) {
	tests := []struct {
		name   string
		steps  func(l *limiter)
		wantLo int
		wantHi int
	}{
		{name: "starts at the maximum", steps: func(*limiter) {}, wantLo: 16, wantHi: 16},
		{name: "one throttle halves", steps: func(l *limiter) { cycle(t, l, true) }, wantLo: 8, wantHi: 8},
		{name: "a storm of one round halves once", steps: func(l *limiter) {
			start := time.Now().Add(-time.Millisecond)
			for range 8 {
				mustAcquire(t, l, false)
			}
			for range 8 {
				l.release(start, true, true)
			}
		}, wantLo: 8, wantHi: 8},
		{name: "rounds of throttles go to one", steps: func(l *limiter) {
			for range 10 {
				cycle(t, l, true)
			}
		}, wantLo: 1, wantHi: 1},
		{name: "good answers raise it back", steps: func(l *limiter) {
			for range 10 {
				cycle(t, l, true)
			}
			for range 30 {
				cycle(t, l, false)
			}
		}, wantLo: 6, wantHi: 9},
		{name: "never past the maximum", steps: func(l *limiter) {
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

func cycle(t *testing.T, l *limiter, throttled bool) {
	t.Helper()
	mustAcquire(t, l, false)
	start := time.Now()
	time.Sleep(time.Microsecond) // a later round than the last decrease
	l.release(start, throttled, true)
}

func mustAcquire(t *testing.T, l *limiter, readahead bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := l.acquire(ctx, readahead); err != nil {
		t.Fatalf("acquire: %v", err)
	}
}

// TestLimiterDemandFirst: a freed slot goes to a waiting demand request
// before a readahead that waited longer.
func TestLimiterDemandFirst(t *testing.T) {
	l := newLimiter("test", 1)
	mustAcquire(t, l, false)
	order := make(chan string, 2)
	ahead := make(chan struct{})
	go func() {
		close(ahead)
		mustAcquireBg(l, true)
		order <- "readahead"
	}()
	<-ahead
	waitWaiters(t, l, 0, 1)
	go func() {
		mustAcquireBg(l, false)
		order <- "demand"
		l.release(time.Now(), false, true)
	}()
	waitWaiters(t, l, 1, 1)
	l.release(time.Now(), false, true)
	if first := <-order; first != "demand" {
		t.Fatalf("%s got the slot first; want demand", first)
	}
	<-order
}

func mustAcquireBg(l *limiter, readahead bool) {
	_ = l.acquire(context.Background(), readahead)
}

// waitWaiters waits until the limiter queues the given waiters (no sleeps
// to order goroutines: the queue lengths are the condition).
func waitWaiters(t *testing.T, l *limiter, demand, ahead int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		d, a := len(l.demand), len(l.ahead)
		l.mu.Unlock()
		if d == demand && a == ahead {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiters %d/%d, want %d/%d", d, a, demand, ahead)
		}
		time.Sleep(time.Millisecond)
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
