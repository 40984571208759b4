package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// fakeSource fails with errs in order, then succeeds. With hang set, a call
// whose error slot is errHang waits for its context instead.
type fakeSource struct {
	mu    sync.Mutex
	errs  []error
	calls int
	last  time.Time
}

var errHang = errors.New("hang until the context ends")

func (f *fakeSource) next(ctx context.Context) error {
	f.mu.Lock()
	f.calls++
	f.last = time.Now()
	var err error
	if len(f.errs) > 0 {
		err = f.errs[0]
		f.errs = f.errs[1:]
	}
	f.mu.Unlock()
	if err == errHang {
		<-ctx.Done()
		return fmt.Errorf("fake: %w", ctx.Err())
	}
	return err
}

func (f *fakeSource) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeSource) ID() string { return "fake" }

func (f *fakeSource) List(ctx context.Context, dir string) ([]Entry, error) {
	if err := f.next(ctx); err != nil {
		return nil, err
	}
	return []Entry{{Name: "x"}}, nil
}

func (f *fakeSource) Stat(ctx context.Context, p string) (Entry, error) {
	if err := f.next(ctx); err != nil {
		return Entry{}, err
	}
	return Entry{Name: "x", Size: 1}, nil
}

func (f *fakeSource) ReadAt(ctx context.Context, p, v string, buf []byte, off int64) error {
	if err := f.next(ctx); err != nil {
		return err
	}
	copy(buf, "x")
	return nil
}

// fastPolicy retries quickly.
func fastPolicy(attempts int) RetryPolicy {
	return RetryPolicy{Attempts: attempts, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond,
		TTFB: 5 * time.Second}
}

func TestRetry(t *testing.T) {
	transient := errors.New("503 SlowDown")
	reset := fmt.Errorf("read: %w", errors.New("connection reset by peer"))
	tests := []struct {
		name      string
		errs      []error
		attempts  int
		wantCalls int
		wantErr   error // nil: success
		wantText  string
	}{
		{name: "success", attempts: 6, wantCalls: 1},
		{name: "transient then success", errs: []error{transient, reset, io.ErrUnexpectedEOF}, attempts: 6, wantCalls: 4},
		{name: "attempt deadline is transient", errs: []error{context.DeadlineExceeded}, attempts: 2, wantCalls: 2},
		{name: "budget used up", errs: []error{transient, transient, reset}, attempts: 3, wantCalls: 3,
			wantErr: reset, wantText: "giving up after 3 attempts"},
		{name: "not found is permanent", errs: []error{fmt.Errorf("x: %w", ErrNotFound)}, attempts: 6, wantCalls: 1,
			wantErr: ErrNotFound},
		{name: "permanent after transient", errs: []error{transient, fmt.Errorf("x: %w", ErrVersionChanged)},
			attempts: 6, wantCalls: 2, wantErr: ErrVersionChanged},
		{name: "permission", errs: []error{ErrPermission}, attempts: 6, wantCalls: 1, wantErr: ErrPermission},
		{name: "out of range", errs: []error{ErrOutOfRange}, attempts: 6, wantCalls: 1, wantErr: ErrOutOfRange},
		{name: "invalid", errs: []error{ErrInvalid}, attempts: 6, wantCalls: 1, wantErr: ErrInvalid},
		{name: "cancelled below", errs: []error{context.Canceled}, attempts: 6, wantCalls: 1, wantErr: context.Canceled},
		{name: "no cap: retried until the budget", errs: []error{transient, reset, transient, reset, transient, reset,
			transient}, attempts: 0, wantCalls: 8},
	}
	methods := map[string]func(Source) error{
		"List":   func(s Source) error { _, err := s.List(context.Background(), "d"); return err },
		"Stat":   func(s Source) error { _, err := s.Stat(context.Background(), "f"); return err },
		"ReadAt": func(s Source) error { return s.ReadAt(context.Background(), "f", "v", make([]byte, 1), 0) },
	}
	for _, tc := range tests {
		for mname, call := range methods {
			t.Run(tc.name+"/"+mname, func(t *testing.T) {
				f := &fakeSource{errs: append([]error(nil), tc.errs...)}
				err := call(WithRetry(f, fastPolicy(tc.attempts)))
				if f.callCount() != tc.wantCalls {
					t.Errorf("%d calls, want %d", f.callCount(), tc.wantCalls)
				}
				switch {
				case tc.wantErr == nil && err != nil:
					t.Errorf("error %v, want success", err)
				case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
					t.Errorf("error %v, want %v", err, tc.wantErr)
				case tc.wantText != "" && !strings.Contains(fmt.Sprint(err), tc.wantText):
					t.Errorf("error %q does not contain %q", err, tc.wantText)
				}
			})
		}
	}
}

func TestIsPermanent(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{ErrNotFound, true}, {ErrPermission, true}, {ErrVersionChanged, true}, {ErrOutOfRange, true},
		{ErrInvalid, true}, {context.Canceled, true}, {fmt.Errorf("a: %w", ErrNotFound), true},
		{context.DeadlineExceeded, false}, {io.ErrUnexpectedEOF, false}, {errors.New("500"), false},
		{nil, false},
	}
	for _, tc := range tests {
		if got := IsPermanent(tc.err); got != tc.want {
			t.Errorf("IsPermanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRetryStopsWhenCancelled(t *testing.T) {
	transient := errors.New("503")
	t.Run("during backoff", func(t *testing.T) {
		f := &fakeSource{errs: []error{transient, transient, transient}}
		s := WithRetry(f, RetryPolicy{Attempts: 10, BaseDelay: 10 * time.Second, MaxDelay: 10 * time.Second})
		ctx, cancel := context.WithCancel(context.Background())
		// Wait for the first failure, then cancel during the backoff.
		go func() {
			for f.callCount() == 0 {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond)
			cancel()
		}()
		start := time.Now()
		_, err := s.Stat(ctx, "f")
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("returned after %v", d)
		}
		if !errors.Is(err, context.Canceled) || !errors.Is(err, transient) {
			t.Errorf("error %v; want it to wrap context.Canceled and the last error", err)
		}
		if f.callCount() != 1 && f.callCount() != 2 {
			t.Errorf("%d calls", f.callCount())
		}
	})
	t.Run("during an attempt", func(t *testing.T) {
		f := &fakeSource{errs: []error{errHang}}
		s := WithRetry(f, DefaultRetryPolicy())
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := s.ReadAt(ctx, "f", "", make([]byte, 1), 0)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("returned after %v", d)
		}
		if !errors.Is(err, context.DeadlineExceeded) || f.callCount() != 1 {
			t.Errorf("error %v after %d calls; want DeadlineExceeded after 1", err, f.callCount())
		}
	})
	t.Run("already cancelled", func(t *testing.T) {
		f := &fakeSource{}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := WithRetry(f, DefaultRetryPolicy()).List(ctx, "")
		if !errors.Is(err, context.Canceled) || f.callCount() != 0 {
			t.Errorf("error %v after %d calls; want Canceled without a call", err, f.callCount())
		}
	})
}

func TestRetryPerAttemptTimeout(t *testing.T) {
	f := &fakeSource{errs: []error{errHang, errHang}}
	s := WithRetry(f, RetryPolicy{Attempts: 3, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond,
		TTFB: 30 * time.Millisecond})
	start := time.Now()
	if _, err := s.Stat(context.Background(), "f"); err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if f.callCount() != 3 {
		t.Errorf("%d calls, want 3", f.callCount())
	}
	if d := time.Since(start); d < 60*time.Millisecond || d > 2*time.Second {
		t.Errorf("took %v; want two 30 ms timeouts", d)
	}
}

func TestBackoff(t *testing.T) {
	p := RetryPolicy{BaseDelay: 50 * time.Millisecond, MaxDelay: 2 * time.Second}
	for attempt := 1; attempt <= 100; attempt++ {
		ceiling := p.MaxDelay
		if attempt < 10 {
			ceiling = min(p.MaxDelay, p.BaseDelay<<(attempt-1))
		}
		var hi time.Duration
		for i := 0; i < 200; i++ {
			d := p.Backoff(attempt)
			if d < 0 || d > ceiling {
				t.Fatalf("backoff(%d) = %v, want within [0, %v]", attempt, d, ceiling)
			}
			hi = max(hi, d)
		}
		if hi < ceiling/2 {
			t.Errorf("backoff(%d): largest of 200 draws %v; want full jitter up to %v", attempt, hi, ceiling)
		}
	}
	uncapped := RetryPolicy{BaseDelay: time.Second}
	if d := uncapped.Backoff(1000); d < 0 {
		t.Errorf("uncapped backoff overflowed: %v", d)
	}
	if d := (RetryPolicy{}).Backoff(3); d != 0 {
		t.Errorf("zero policy backoff = %v", d)
	}
}

// TestRetryS3ThroughFaults reads through a proxy that fails 10 % of the
// requests with 503 SlowDown and cuts 5 % of the responses short.
func TestRetryS3ThroughFaults(t *testing.T) {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "faulty")
	data := testutil.RandBytes(3<<20, 21)
	srv.Put(t, "faulty", "dir/obj", data)

	proxy, err := faultproxy.New(srv.Endpoint, faultproxy.Config{FailRate: 0.1, ResetRate: 0.05, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	raw, err := Parse("s3://faulty?endpoint="+proxy.URL(), Options{
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, S3Region: "us-east-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	src := WithRetry(raw, RetryPolicy{Attempts: 10, BaseDelay: 5 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
		TTFB: 10 * time.Second})
	ctx := testCtx(t)

	for i := 0; i < 10; i++ {
		if l, err := src.List(ctx, "dir"); err != nil || len(l) != 1 {
			t.Fatalf("List = %v, %v", l, err)
		}
	}
	e, err := src.Stat(ctx, "dir/obj")
	if err != nil || e.Size != int64(len(data)) {
		t.Fatalf("Stat = %+v, %v", e, err)
	}

	const reads, workers = 200, 8
	type job struct{ off, n int }
	jobs := make(chan job)
	errs := make(chan error, reads)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				buf := make([]byte, j.n)
				if err := src.ReadAt(ctx, "dir/obj", e.Version, buf, int64(j.off)); err != nil {
					errs <- fmt.Errorf("ReadAt(%d, %d): %w", j.off, j.n, err)
				} else if !bytes.Equal(buf, data[j.off:j.off+j.n]) {
					errs <- fmt.Errorf("ReadAt(%d, %d): wrong bytes", j.off, j.n)
				}
			}
		}()
	}
	rnd := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < reads; i++ {
		n := 1 + rnd.IntN(256<<10)
		jobs <- job{rnd.IntN(len(data) - n + 1), n}
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every fault costs one more request.
	if got := proxy.Requests(); got < reads+11+10 {
		t.Errorf("proxy saw %d requests for %d operations; the faults did not happen", got, reads+11)
	}
	t.Logf("%d requests through the proxy for %d operations", proxy.Requests(), reads+11)

	t.Run("origin down", func(t *testing.T) {
		proxy.SetDown(true)
		quick := WithRetry(raw, fastPolicy(3))
		err := quick.ReadAt(ctx, "dir/obj", e.Version, make([]byte, 10), 0)
		if err == nil || IsPermanent(err) || !strings.Contains(err.Error(), "giving up after 3 attempts") {
			t.Fatalf("ReadAt with the origin down = %v; want a transient failure after 3 attempts", err)
		}
		proxy.SetDown(false)
		buf := make([]byte, 10)
		if err := src.ReadAt(ctx, "dir/obj", e.Version, buf, 0); err != nil || !bytes.Equal(buf, data[:10]) {
			t.Fatalf("ReadAt after recovery = %v", err)
		}
	})
}

// TestRetryBudget: without an attempt cap, a call that keeps failing ends
// when its budget (the caller's deadline, else Budget) is spent, with the
// last cause; attempts are bounded by TTFB, so a hanging origin costs one
// TTFB per attempt.
func TestRetryBudget(t *testing.T) {
	tests := []struct {
		name     string
		deadline time.Duration // caller's; 0: none
		budget   time.Duration
		hang     bool
	}{
		{name: "caller's deadline", deadline: 300 * time.Millisecond, budget: time.Hour},
		{name: "policy budget", budget: 300 * time.Millisecond},
		{name: "hanging origin", budget: 300 * time.Millisecond, hang: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := make([]error, 1000)
			for i := range errs {
				errs[i] = errors.New("503 SlowDown")
				if tc.hang {
					errs[i] = errHang
				}
			}
			f := &fakeSource{errs: errs}
			s := WithRetry(f, RetryPolicy{Budget: tc.budget, BaseDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond,
				TTFB: 40 * time.Millisecond})
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			start := time.Now()
			_, err := s.Stat(ctx, "f")
			took := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %v; want it to wrap DeadlineExceeded", err)
			}
			if took < 250*time.Millisecond || took > 2*time.Second {
				t.Errorf("gave up after %v; want about 300ms", took)
			}
			if f.callCount() < 3 {
				t.Errorf("%d attempts within the budget; want several", f.callCount())
			}
		})
	}
}

func TestAttemptTimeout(t *testing.T) {
	p := RetryPolicy{TTFB: 10 * time.Second, MinRate: 1 << 20}
	if got, want := p.AttemptTimeout(4<<20), 14*time.Second; got != want {
		t.Errorf("AttemptTimeout(4 MiB) = %v, want %v", got, want)
	}
	if got := p.AttemptTimeout(0); got != 10*time.Second {
		t.Errorf("AttemptTimeout(0) = %v, want the TTFB", got)
	}
}

// TestRetryResumesPartialReads: a read whose connection is cut mid-body is
// retried for the rest only, so the origin sends each byte about once.
func TestRetryResumesPartialReads(t *testing.T) {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "cut")
	data := testutil.RandBytes(4<<20, 22)
	srv.Put(t, "cut", "obj", data)
	for _, tc := range []struct {
		name      string
		resetRate float64
	}{
		{"every other response cut", 0.5},
		{"most responses cut", 0.8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy, err := faultproxy.New(srv.Endpoint, faultproxy.Config{ResetRate: tc.resetRate, Seed: 3})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = proxy.Close() })
			raw, err := Parse("s3://cut?endpoint="+proxy.URL(), Options{
				AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, S3Region: "us-east-1"})
			if err != nil {
				t.Fatal(err)
			}
			src := WithRetry(raw, RetryPolicy{Attempts: 200, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond})
			ctx := testCtx(t)
			e, err := src.Stat(ctx, "obj")
			if err != nil {
				t.Fatal(err)
			}
			before := proxy.BodyBytes()
			const reads = 8
			for i := 0; i < reads; i++ {
				buf := make([]byte, len(data))
				if err := src.ReadAt(ctx, "obj", e.Version, buf, 0); err != nil {
					t.Fatalf("ReadAt: %v", err)
				}
				if !bytes.Equal(buf, data) {
					t.Fatal("ReadAt returned wrong bytes")
				}
			}
			// Without resuming, every cut re-sends what had arrived: 1.26 ×
			// and 2.79 × for these rows when this test was written.
			sent, want := proxy.BodyBytes()-before, int64(reads*len(data))
			t.Logf("origin sent %d body bytes for %d read (%.3f ×); %d requests", sent, want,
				float64(sent)/float64(want), proxy.Requests())
			if sent > want+want/20 {
				t.Errorf("origin sent %d body bytes for %d read: the retries asked for bytes that had arrived", sent, want)
			}
		})
	}
}
