package source

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"k8s.io/klog/v2"
)

// RetryPolicy says how WithRetry retries transient failures.
type RetryPolicy struct {
	// Attempts is the total number of tries per call (values below 1 mean 1).
	Attempts int
	// BaseDelay and MaxDelay bound the backoff: before retry n (n ≥ 1) the
	// wrapper sleeps a uniformly random duration in
	// [0, min(MaxDelay, BaseDelay·2^(n-1))] ("full jitter").
	BaseDelay, MaxDelay time.Duration
	// PerAttemptTimeout bounds every try (0: only the caller's context).
	// A try that times out is retried.
	PerAttemptTimeout time.Duration
}

// DefaultRetryPolicy is 6 attempts, 50 ms base delay, 2 s cap and 30 s per
// attempt: a worst case of about 3 minutes, typically far less.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{Attempts: 6, BaseDelay: 50 * time.Millisecond, MaxDelay: 2 * time.Second,
		PerAttemptTimeout: 30 * time.Second}
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
	return false
}

// WithRetry returns s with every method retried under p. Permanent errors
// (IsPermanent) are returned at once and unchanged. When the caller's
// context ends, the wrapper stops at once and returns an error wrapping both
// the context's error and the last failure. When the attempts are used up,
// the error wraps the last failure. A failed ReadAt may have written to p.
func WithRetry(s Source, p RetryPolicy) Source {
	if p.Attempts < 1 {
		p.Attempts = 1
	}
	return &retrySource{s: s, p: p}
}

type retrySource struct {
	s Source
	p RetryPolicy
}

var _ Source = (*retrySource)(nil)

func (r *retrySource) ID() string { return r.s.ID() }

func (r *retrySource) List(ctx context.Context, dir string) ([]Entry, error) {
	var out []Entry
	err := r.do(ctx, "list", dir, func(ctx context.Context) error {
		var err error
		out, err = r.s.List(ctx, dir)
		return err
	})
	return out, err
}

func (r *retrySource) Stat(ctx context.Context, path string) (Entry, error) {
	var out Entry
	err := r.do(ctx, "stat", path, func(ctx context.Context) error {
		var err error
		out, err = r.s.Stat(ctx, path)
		return err
	})
	return out, err
}

func (r *retrySource) ReadAt(ctx context.Context, path, version string, p []byte, off int64) error {
	return r.do(ctx, "read", path, func(ctx context.Context) error {
		return r.s.ReadAt(ctx, path, version, p, off)
	})
}

func (r *retrySource) do(ctx context.Context, op, path string, try func(context.Context) error) error {
	var last error
	for attempt := 0; attempt < r.p.Attempts; attempt++ {
		if attempt > 0 {
			d := r.p.backoff(attempt)
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
		actx, cancel := ctx, context.CancelFunc(func() {})
		if r.p.PerAttemptTimeout > 0 {
			actx, cancel = context.WithTimeout(ctx, r.p.PerAttemptTimeout)
		}
		err := try(actx)
		cancel()
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
	klog.V(1).InfoS("Source request failed", "source", r.s.ID(), "op", op, "path", path,
		"attempts", r.p.Attempts, "err", last)
	return fmt.Errorf("%s %q: giving up after %d attempts: %w", op, path, r.p.Attempts, last)
}

// stopped is the error for a call whose context ended.
func (r *retrySource) stopped(ctx context.Context, op, path string, last error) error {
	if last == nil {
		return fmt.Errorf("%s %q: %w", op, path, ctx.Err())
	}
	if errors.Is(last, ctx.Err()) {
		return last
	}
	return fmt.Errorf("%s %q: %w (last error: %w)", op, path, ctx.Err(), last)
}

// backoff is the random delay before retry attempt (attempt ≥ 1).
// MaxDelay ≤ 0 means no cap.
func (p RetryPolicy) backoff(attempt int) time.Duration {
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
