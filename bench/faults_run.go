package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
)

// faultWorker is one cache worker of a scenario; a restart adds a process.
type faultWorker struct {
	cacheDir, url string
	procs         []*child // every process that served as this worker, the current one last
}

func (w *faultWorker) cur() *child { return w.procs[len(w.procs)-1] }

// faultRun is one scenario: its processes, its proxies and what happened.
type faultRun struct {
	e       *burstEnv
	o       *FaultsOptions
	sc      string
	dir     string
	workers []*faultWorker
	clients []*child
	// workerProxy stands between the clients and the faulty worker (delay,
	// drop); originProxy between everyone and the capped origin (slowdown).
	workerProxy, originProxy *faultproxy.Proxy

	r      FaultResult
	t0     time.Time // the burst's start
	before int64     // origin bytes before the scenario
}

// runFault runs one scenario on fresh workers and fresh mounts.
func runFault(ctx context.Context, e *burstEnv, o *FaultsOptions, sc string) (FaultResult, error) {
	f := &faultRun{e: e, o: o, sc: sc, dir: filepath.Join(e.work, "faults-"+sc), before: e.proxy.BodyBytes(),
		r: FaultResult{Scenario: sc, Clients: o.Clients, Workers: o.Workers, DatasetBytes: e.dataset,
			FileReads: o.Clients * len(e.files)}}
	defer os.RemoveAll(f.dir)
	defer f.teardown()
	if err := f.start(ctx); err != nil {
		return FaultResult{}, err
	}
	f.burst(ctx)
	f.teardown()
	f.r.OriginBytes = e.proxy.BodyBytes() - f.before
	f.r.OriginRatio = float64(f.r.OriginBytes) / float64(e.dataset)
	return f.r, nil
}

// start starts the proxies, the workers and the client mounts.
func (f *faultRun) start(ctx context.Context) error {
	origin := f.e.originURL()
	if f.sc == FaultSlowdown {
		// In front of the capped, counting proxy: a refused request never
		// reaches it. The 503s start with the burst (SetFaults).
		p, err := faultproxy.New(f.e.proxy.URL(), faultproxy.Config{Seed: faultSeed})
		if err != nil {
			return err
		}
		f.originProxy, origin = p, originURLOf(p.URL())
	}
	for w := range f.o.Workers {
		dir := filepath.Join(f.dir, fmt.Sprintf("worker-%d", w))
		k, url, err := f.e.startWorker(ctx, dir, "127.0.0.1:0", origin)
		if err != nil {
			return err
		}
		f.workers = append(f.workers, &faultWorker{cacheDir: dir, url: url, procs: []*child{k}})
	}
	urls := make([]string, len(f.workers))
	for i, w := range f.workers {
		urls[i] = w.url
	}
	if f.sc == FaultDelay || f.sc == FaultDrop {
		p, err := faultproxy.New(urls[faultyWorker], faultproxy.Config{Seed: faultSeed})
		if err != nil {
			return err
		}
		f.workerProxy, urls[faultyWorker] = p, p.URL()
	}
	for i := range f.o.Clients {
		k, err := f.e.startMount(ctx, filepath.Join(f.dir, fmt.Sprintf("c%03d", i)), urls, origin, f.sc == FaultSlowdown)
		if err != nil {
			return err
		}
		f.clients = append(f.clients, k)
	}
	return nil
}

// burst lets every client read the whole dataset at once while the fault
// is injected, and records the outcome.
func (f *faultRun) burst(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tally := &readTally{}
	f.t0 = time.Now()
	stopped := make(chan struct{}) // closed when the burst is over
	faulted := make(chan struct{})
	go func() {
		defer close(faulted)
		f.inject(ctx, stopped)
	}()
	read := make(chan struct{})
	go func() {
		defer close(read)
		var wg sync.WaitGroup
		for _, k := range f.clients {
			wg.Go(func() { f.e.readCounted(ctx, k.mountPoint, tally) })
		}
		wg.Wait()
	}()
	timeout := time.NewTimer(f.o.Timeout)
	defer timeout.Stop()
	var notes []string // f.r.Notes is inject's until it is done
	select {
	case <-read:
		f.r.Finished = true
		f.r.MakespanSec = time.Since(f.t0).Seconds()
	case <-timeout.C:
		f.r.MakespanSec = f.o.Timeout.Seconds()
		// Kill what is left: a reader blocked in read(2) on a mount whose
		// server died gets an error and returns.
		cancel()
		for _, k := range f.clients {
			_ = syscall.Kill(k.cmd.Process.Pid, syscall.SIGKILL)
		}
		select {
		case <-read:
		case <-time.After(30 * time.Second):
			notes = append(notes, "readers still blocked 30 s after their mounts were killed")
		}
	case <-ctx.Done():
	}
	close(stopped)
	<-faulted
	f.r.Notes = append(f.r.Notes, notes...)
	tally.mu.Lock()
	f.r.ReadErrors, f.r.WrongBytes, f.r.Errors = tally.failed, tally.wrong, tally.errs
	tally.mu.Unlock()
}

// inject applies the scenario's fault and undoes what must be undone when
// stopped closes (the end of the burst).
func (f *faultRun) inject(ctx context.Context, stopped <-chan struct{}) {
	switch f.sc {
	case FaultNone:
		f.r.Fault = "none"
		return
	case FaultDelay:
		f.hitAt()
		_ = f.workerProxy.SetFaults(faultproxy.Config{DelayRate: faultDelayRate, Delay: faultDelay})
		f.r.Fault = fmt.Sprintf("worker %d behind a proxy that holds %.0f%% of its requests for %v, from the burst's start",
			faultyWorker, 100*faultDelayRate, faultDelay)
		return
	case FaultSlowdown:
		f.hitAt()
		_ = f.originProxy.SetFaults(faultproxy.Config{FailRate: faultSlowdownRate})
		f.r.Fault = fmt.Sprintf("the origin answers 503 SlowDown to %.0f%% of the requests (workers' and clients'; the clients hold credentials, --origin-fallback), from the burst's start",
			100*faultSlowdownRate)
		return
	}
	select {
	case <-stopped:
		f.r.Fault = fmt.Sprintf("none: the burst ended before %v", f.o.FaultAfter)
		f.r.Notes = append(f.r.Notes, "the burst ended before the fault; use a bigger dataset or a smaller --fault-after")
		return
	case <-time.After(f.o.FaultAfter):
	}
	at := f.hitAt()
	w := f.workers[faultyWorker]
	switch f.sc {
	case FaultStop:
		pid := w.cur().cmd.Process.Pid
		_ = syscall.Kill(pid, syscall.SIGSTOP)
		f.r.Fault = fmt.Sprintf("SIGSTOP worker %d at %s", faultyWorker, at)
		select {
		case <-stopped:
			f.r.Fault += "; SIGCONT after the burst"
		case <-time.After(f.o.StopFor):
			f.r.Fault += fmt.Sprintf("; SIGCONT at %.1f s", time.Since(f.t0).Seconds())
		}
		_ = syscall.Kill(pid, syscall.SIGCONT)
	case FaultDrop:
		f.workerProxy.SetBlackhole(true)
		f.r.Fault = fmt.Sprintf("worker %d's proxy drops all traffic from %s on (connections stay open)", faultyWorker, at)
	case FaultRestart:
		old := w.cur()
		_ = syscall.Kill(old.cmd.Process.Pid, syscall.SIGKILL)
		<-old.exited
		f.r.Fault = fmt.Sprintf("SIGKILL worker %d at %s", faultyWorker, at)
		select {
		case <-stopped:
			f.r.Fault += "; not restarted, the burst had ended"
			return
		case <-time.After(f.o.RestartAfter):
		}
		listen := w.url[len("http://"):]
		k, url, err := f.e.startWorker(ctx, w.cacheDir, listen, f.e.originURL())
		switch {
		case err != nil:
			f.r.Fault += "; its restart failed"
			f.r.Notes = append(f.r.Notes, "restarting the killed worker: "+firstLine(err.Error()))
		case url != w.url:
			w.procs = append(w.procs, k)
			f.r.Notes = append(f.r.Notes, fmt.Sprintf("the restarted worker listens on %s, not %s", url, w.url))
		default:
			w.procs = append(w.procs, k)
			f.r.Fault += fmt.Sprintf("; restarted on the same cache dir and address, serving at %.1f s", time.Since(f.t0).Seconds())
		}
	}
}

// hitAt records that the fault hits now and describes when.
func (f *faultRun) hitAt() string {
	f.r.FaultAtSec = time.Since(f.t0).Seconds()
	f.r.FaultAtOriginFraction = float64(f.e.proxy.BodyBytes()-f.before) / float64(f.e.dataset)
	return fmt.Sprintf("%.1f s (the origin had sent %.0f%% of the dataset)", f.r.FaultAtSec, 100*f.r.FaultAtOriginFraction)
}

// teardown stops everything the scenario started (a stopped worker is
// continued first) and adds up the CPU time; it is safe to call twice.
func (f *faultRun) teardown() {
	if f.workerProxy != nil {
		f.workerProxy.SetBlackhole(false)
	}
	for _, w := range f.workers {
		select {
		case <-w.cur().exited:
		default:
			_ = syscall.Kill(w.cur().cmd.Process.Pid, syscall.SIGCONT)
		}
	}
	f.r.ClientCPU, f.r.WorkerCPU = 0, 0
	f.note(stopAllErrs(f.clients), !f.r.Finished) // mounts killed at a timeout exit uncleanly
	var last []*child
	for _, w := range f.workers {
		last = append(last, w.cur())
	}
	f.note(stopAllErrs(last), false)
	for _, k := range f.clients {
		f.r.ClientCPU += k.cpuSeconds()
	}
	for _, w := range f.workers {
		for _, k := range w.procs {
			f.r.WorkerCPU += k.cpuSeconds()
		}
	}
	for _, p := range []*faultproxy.Proxy{f.workerProxy, f.originProxy} {
		if p != nil {
			p.Close()
		}
	}
}

// note records (and logs) what stopping processes reported, unless quiet.
func (f *faultRun) note(errs []error, quiet bool) {
	for _, err := range errs {
		if err != nil && !quiet {
			klog.InfoS("Stopping a benchmark process", "scenario", f.sc, "err", err)
			f.r.Notes = append(f.r.Notes, firstLine(err.Error()))
		}
	}
}

// stopAllErrs stops kids in parallel and returns what each stop reported
// (only the first stop of a child reports).
func stopAllErrs(kids []*child) []error {
	errs := make([]error, len(kids))
	var wg sync.WaitGroup
	for i, k := range kids {
		wg.Go(func() { errs[i] = k.stop() })
	}
	wg.Wait()
	return errs
}

// readTally adds up the readers' outcomes.
type readTally struct {
	mu     sync.Mutex
	failed int
	wrong  int64
	errs   []string // the first maxErrors
}

const maxErrors = 8

// readCounted reads every file of the dataset under dir, clientConcurrency
// at a time, and tallies failed files and wrong bytes (it goes on after
// either).
func (e *burstEnv) readCounted(ctx context.Context, dir string, t *readTally) {
	sem := make(chan struct{}, clientConcurrency)
	var wg sync.WaitGroup
	for i, p := range e.paths(dir) {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			wrong, err := readVerified(ctx, p, e.files[i].Sum)
			t.mu.Lock()
			defer t.mu.Unlock()
			t.wrong += wrong
			if err != nil {
				t.failed++
				if len(t.errs) < maxErrors {
					t.errs = append(t.errs, fmt.Sprintf("%s: %v", p, err))
				}
			}
		})
	}
	wg.Wait()
}

// readVerified reads path sequentially in ChunkSize reads and checks each
// chunk against sum; it returns the bytes of the chunks that did not match
// and the error that stopped the read (open, read, a short or long file).
func readVerified(ctx context.Context, path string, sum *FileSum) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, ChunkSize)
	var wrong, off int64
	for i := range sum.Chunks {
		if err := ctx.Err(); err != nil {
			return wrong, err
		}
		n := sum.chunkLen(i)
		if _, err := io.ReadFull(f, buf[:n]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return wrong, fmt.Errorf("short file: ends before %d bytes (size %d)", off+n, sum.Size)
			}
			return wrong, fmt.Errorf("read at offset %d: %w", off, err)
		}
		if sum.Verify(buf[:n], off) != nil {
			wrong += n
		}
		off += n
	}
	if n, _ := f.Read(buf[:1]); n > 0 {
		return wrong, fmt.Errorf("longer than its %d bytes", sum.Size)
	}
	return wrong, nil
}
