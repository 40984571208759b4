package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"
)

// lateWorkers is the worker set of the scale-ahead and cold-start modes:
// one worker serves when the burst begins, and the others start delay
// after the clients' first read, as a controller's scale-up would add
// them. The mounts know every worker's address from the start; the ones
// not up yet are failed workers to them, probed until they answer. Each
// worker has the others as its peers, so a joining worker takes its
// blocks from the first one, not from the origin.
type lateWorkers struct {
	e     *burstEnv
	base  string
	delay time.Duration

	timer *time.Timer
	done  chan struct{}
	// Set by the timer's function before done is closed.
	started []*child
	at      time.Duration // when the last of them was serving
	err     error
}

// startLate is the scale-ahead and cold-start modes' start: the first
// client's call starts one worker.
func (e *burstEnv) startLate(delay time.Duration) func(ctx context.Context, dir string, i int) (*child, error) {
	return func(ctx context.Context, dir string, i int) (*child, error) {
		if i == 0 {
			base := filepath.Dir(dir)
			if err := e.startFirstWorkers(ctx, base, 1); err != nil {
				return nil, err
			}
			e.late = &lateWorkers{e: e, base: base, delay: delay}
		}
		return e.startMount(ctx, dir, e.workerURLs, e.originURL(), false)
	}
}

// begin arms the start of the other workers at t0 + delay.
func (l *lateWorkers) begin(ctx context.Context, t0 time.Time) {
	l.done = make(chan struct{})
	l.timer = time.AfterFunc(l.delay, func() {
		defer close(l.done)
		n := l.e.o.Workers
		kids := make([]*child, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for w := 1; w < n; w++ {
			wg.Go(func() { kids[w], errs[w] = l.e.startWorkerAt(ctx, l.base, w) })
		}
		wg.Wait()
		l.at = time.Since(t0)
		for _, k := range kids {
			if k != nil {
				l.started = append(l.started, k)
			}
		}
		l.err = errors.Join(errs...)
	})
}

// end waits for the other workers' start (or cancels it when it is not
// due yet), adds them to the set, and says when they served.
func (l *lateWorkers) end() string {
	if l.timer.Stop() {
		return fmt.Sprintf("the burst ended before the other %d workers were due", l.e.o.Workers-1)
	}
	<-l.done
	l.e.workers = append(l.e.workers, l.started...)
	if l.err != nil {
		return fmt.Sprintf("starting the other workers failed: %v", l.err)
	}
	return fmt.Sprintf("1 worker at the first read; the other %d serving from %.1f s", l.e.o.Workers-1, l.at.Seconds())
}
