package source

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// RetryPolicy is the one retry policy of the hop toward an origin (see
// WithRetry). A call is retried until its budget is spent: the caller's
// context deadline, or Budget when the context has none.
// Every attempt has a deadline that fits its work — TTFB for a stat, List
// for a listing, TTFB plus the bytes at MinRate for a read — so a silent
// origin costs one attempt, never the whole budget.
type RetryPolicy struct {
	// Budget bounds one call, every attempt and wait included, when the
	// caller's context has no deadline (default 60 s).
	Budget time.Duration
	// Attempts caps the tries per call (0: as many as the budget allows).
	Attempts int
	// BaseDelay and MaxDelay bound the backoff: before retry n (n ≥ 1) the
	// wrapper sleeps a uniformly random duration in
	// [0, min(MaxDelay, BaseDelay·2^(n-1))] ("full jitter").
	BaseDelay, MaxDelay time.Duration
	// TTFB is an attempt's time to its first byte (default 10 s).
	TTFB time.Duration
	// MinRate is the transfer rate a read attempt must sustain after its
	// first byte, bytes per second (default 1 MiB/s).
	MinRate int64
	// List bounds one List attempt, which may page through many keys
	// (default 30 s).
	List time.Duration
	// MaxInFlight is the most requests in flight toward the origin; throttling
	// answers lower it and good answers raise it back (AIMD). 0: no limit.
	MaxInFlight int
}

// Policy defaults.
const (
	DefaultBudget      = 60 * time.Second
	DefaultTTFB        = 10 * time.Second
	DefaultMinRate     = 1 << 20
	DefaultListTimeout = 30 * time.Second
	DefaultMaxInFlight = 64
)

// DefaultRetryPolicy retries with 50 ms base delay and a 2 s cap until the
// budget (the caller's deadline, else 60 s) is spent, each attempt bounded
// by 10 s to first byte plus 1 MiB/s, at most 64 requests in flight.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{Budget: DefaultBudget, BaseDelay: 50 * time.Millisecond, MaxDelay: 2 * time.Second,
		TTFB: DefaultTTFB, MinRate: DefaultMinRate, List: DefaultListTimeout, MaxInFlight: DefaultMaxInFlight}
}

// AttemptTimeout is the deadline of one attempt that transfers n bytes:
// TTFB plus n at MinRate.
func (p RetryPolicy) AttemptTimeout(n int64) time.Duration {
	return p.TTFB + time.Duration(float64(n)/float64(p.MinRate)*float64(time.Second))
}

// Bound gives ctx the budget when it has no deadline of its own.
func (p RetryPolicy) Bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, p.Budget)
}

// Backoff is the random delay before retry attempt (attempt ≥ 1).
// MaxDelay ≤ 0 means no cap.
func (p RetryPolicy) Backoff(attempt int) time.Duration {
	if p.BaseDelay <= 0 || attempt < 1 {
		return 0
	}
	d := p.BaseDelay
	for i := 1; i < attempt && (p.MaxDelay <= 0 || d < p.MaxDelay) && d < 1<<61; i++ {
		d *= 2
	}
	if p.MaxDelay > 0 && d > p.MaxDelay {
		d = p.MaxDelay
	}
	return rand.N(d + 1)
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	d := DefaultRetryPolicy()
	if p.Budget <= 0 {
		p.Budget = d.Budget
	}
	if p.TTFB <= 0 {
		p.TTFB = d.TTFB
	}
	if p.MinRate <= 0 {
		p.MinRate = d.MinRate
	}
	if p.List <= 0 {
		p.List = d.List
	}
	return p
}

// IsPermanent reports whether retrying err is pointless: the sentinel errors
// of this package and a cancelled context. Everything else (5xx, 429,
// SlowDown, connection resets, timeouts, io.ErrUnexpectedEOF, ...) is
// transient.
func IsPermanent(err error) bool {
	for _, p := range []error{ErrNotFound, ErrPermission, ErrVersionChanged, ErrOutOfRange, ErrInvalid,
		context.Canceled} {
		if errors.Is(err, p) {
			return true
		}
	}
	var consumer *errPage
	return errors.As(err, &consumer)
}

// WithRetry returns s with every method retried under p. Permanent errors
// (IsPermanent) are returned at once and unchanged. When the budget ends,
// the error wraps both context.DeadlineExceeded and the last failure; when
// the caller cancels, context.Canceled and the last failure; when Attempts
// are used up, the last failure. A failed ReadAt may have written to p.
func WithRetry(s Source, p RetryPolicy) Source {
	p = p.withDefaults()
	r := &retrySource{s: s, p: p}
	if p.MaxInFlight > 0 {
		r.limit = newLimiter(s.ID(), p.MaxInFlight)
	}
	return r
}

type retrySource struct {
	s     Source
	p     RetryPolicy
	limit *Slots // nil: no limit
}

var _ Source = (*retrySource)(nil)

func (r *retrySource) ID() string { return r.s.ID() }

func (r *retrySource) List(ctx context.Context, dir string) ([]Entry, error) {
	var out []Entry
	err := r.do(ctx, "list", dir, fixed(r.p.List), func(ctx context.Context) error {
		var err error
		out, err = r.s.List(ctx, dir)
		return err
	})
	return out, err
}

var _ Pager = (*retrySource)(nil)

// ListPages retries a listing that failed from its start: its pages come
// again, as Pager allows. A large prefix on a slow origin takes as long
// as it takes while its pages keep coming: an attempt ends when no page
// has arrived for List, and the budget runs from the latest page (or
// ctx's deadline, if it has one).
func (r *retrySource) ListPages(ctx context.Context, dir string, page func([]Entry) error) error {
	var mu sync.Mutex
	latest := time.Now()
	progressed := func() {
		mu.Lock()
		latest = time.Now()
		mu.Unlock()
	}
	spent := func() error {
		mu.Lock()
		defer mu.Unlock()
		if since := time.Since(latest); since >= r.p.Budget {
			return fmt.Errorf("%w: no page of the listing for %s", context.DeadlineExceeded, since.Round(time.Millisecond))
		}
		return nil
	}
	return r.retry(ctx, "list", dir, fixed(0), spent, func(ctx context.Context) error {
		sctx, stall := context.WithCancel(ctx)
		defer stall()
		t := time.AfterFunc(r.p.List, stall)
		defer t.Stop()
		err := ListPages(sctx, r.s, dir, func(es []Entry) error {
			t.Reset(r.p.List)
			progressed()
			return page(es)
		})
		if err != nil && sctx.Err() != nil && ctx.Err() == nil { // the stall, not the caller
			return fmt.Errorf("%w: no page of the listing for %s (%v)", context.DeadlineExceeded, r.p.List, err)
		}
		return err
	})
}

func (r *retrySource) Stat(ctx context.Context, path string) (Entry, error) {
	var out Entry
	err := r.do(ctx, "stat", path, fixed(r.p.TTFB), func(ctx context.Context) error {
		var err error
		out, err = r.s.Stat(ctx, path)
		return err
	})
	return out, err
}

// ReadAt retries a read that failed after part of its bytes (PartialError)
// for the rest only: each attempt asks for what has not arrived, with a
// deadline sized to those bytes.
func (r *retrySource) ReadAt(ctx context.Context, path, version string, p []byte, off int64) error {
	done := 0
	return r.do(ctx, "read", path, func() time.Duration { return r.p.AttemptTimeout(int64(len(p) - done)) },
		func(ctx context.Context) error {
			err := r.s.ReadAt(shiftProgress(ctx, done), path, version, p[done:], off+int64(done))
			done += min(received(err), len(p)-done)
			return err
		})
}

// fixed is an attempt deadline that does not change between attempts.
func fixed(d time.Duration) func() time.Duration { return func() time.Duration { return d } }

// do runs try until it succeeds, fails for good, or the budget (ctx's
// deadline, else Budget) or Attempts are spent.
func (r *retrySource) do(ctx context.Context, op, path string, perAttempt func() time.Duration, try func(context.Context) error) error {
	ctx, cancel := r.p.Bound(ctx)
	defer cancel()
	return r.retry(ctx, op, path, perAttempt, nil, try)
}

// retry is do within ctx as it is; spent, when set, ends the retries with
// its error (a budget of its own).
func (r *retrySource) retry(ctx context.Context, op, path string, perAttempt func() time.Duration, spent func() error,
	try func(context.Context) error) error {
	var last error
	for attempt := 0; r.p.Attempts <= 0 || attempt < r.p.Attempts; attempt++ {
		if attempt > 0 && spent != nil {
			if err := spent(); err != nil {
				klog.InfoS("Source request failed within its budget", "source", r.s.ID(), "op", op, "path", path, "err", last)
				return fmt.Errorf("%s %q: %w (last error: %w)", op, path, err, last)
			}
		}
		if attempt > 0 {
			d := r.p.Backoff(attempt)
			klog.V(2).InfoS("Retrying source request", "source", r.s.ID(), "op", op, "path", path,
				"attempt", attempt+1, "delay", d, "err", last)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return r.stopped(ctx, op, path, last)
			case <-t.C:
			}
		}
		if ctx.Err() != nil {
			return r.stopped(ctx, op, path, last)
		}
		err := r.attempt(ctx, perAttempt(), try)
		if err == nil {
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return r.stopped(ctx, op, path, last)
		}
		if IsPermanent(err) {
			return err
		}
	}
	klog.InfoS("Source request failed", "source", r.s.ID(), "op", op, "path", path,
		"attempts", r.p.Attempts, "err", last)
	return fmt.Errorf("%s %q: giving up after %d attempts: %w", op, path, r.p.Attempts, last)
}

// attempt runs one try within its deadline (none when perAttempt is 0)
// and one of the origin's Slots.
func (r *retrySource) attempt(ctx context.Context, perAttempt time.Duration, try func(context.Context) error) error {
	if r.limit != nil {
		if err := r.limit.Acquire(ctx, IsReadahead(ctx)); err != nil {
			return err
		}
	}
	start := time.Now()
	var actx context.Context
	var cancel context.CancelFunc
	if perAttempt > 0 {
		actx, cancel = context.WithTimeout(ctx, perAttempt)
	} else {
		actx, cancel = context.WithCancel(ctx)
	}
	err := try(actx)
	cancel()
	if r.limit != nil {
		r.limit.release(start, errors.Is(err, ErrThrottled), err == nil || IsPermanent(err))
	}
	return err
}

// stopped is the error for a call whose context ended: the caller gave up,
// or the budget is spent (logged with the last cause).
func (r *retrySource) stopped(ctx context.Context, op, path string, last error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		klog.InfoS("Source request failed within its budget", "source", r.s.ID(), "op", op, "path", path, "err", last)
	}
	if last == nil {
		return fmt.Errorf("%s %q: %w", op, path, ctx.Err())
	}
	if errors.Is(last, ctx.Err()) {
		return last
	}
	return fmt.Errorf("%s %q: %w (last error: %w)", op, path, ctx.Err(), last)
}
