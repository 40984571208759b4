package cachectl

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/cacheserver"
	"github.com/sluice-dev/sluice/internal/source"
)

// Preloader warms a Dataset's cache workers: it lists the paths of a Load
// through the workers and reads every block of every file once, aligned
// on the workers' block size, so each block goes to the worker that owns
// it (HRW) and that worker fetches it from the origin once and keeps it.
// The data itself is discarded here.
type Preloader struct {
	// Open returns the workers of ds as a source (and a release func).
	Open func(ctx context.Context, ds *v1alpha1.Dataset) (source.Source, func(), error)
	// BlockSize is the workers' block size (default 4 MiB, the default of
	// sluice cache-worker).
	BlockSize int64
	// Parallel bounds blocks read at once (default 4).
	Parallel int
	// Wait is how long to wait for a worker to answer (default 5 min).
	Wait time.Duration
}

// WorkersSource opens the workers of a Dataset through its headless
// Service, presenting the token in tokenFile (the controller's projected
// token; the workers trust the controller's service account), verified
// with tc (nil: the workers serve plain HTTP).
func WorkersSource(clusterDomain, tokenFile string, tc *tls.Config) func(ctx context.Context, ds *v1alpha1.Dataset) (source.Source, func(), error) {
	return func(ctx context.Context, ds *v1alpha1.Dataset) (source.Source, func(), error) {
		ctx, cancel := context.WithCancel(ctx)
		pool, err := cacheserver.NewPool(ctx, cacheserver.PoolConfig{DNS: ds.WorkersAddress(clusterDomain),
			Dataset: ds.Name, TokenFile: tokenFile, TLS: tc, Insecure: tc == nil})
		if err != nil {
			cancel()
			return nil, nil, err
		}
		go pool.Run(ctx)
		return cacheserver.NewSource(pool, cacheserver.WorkersID(ds.Name), nil), cancel, nil
	}
}

type preloadFile struct {
	path string
	e    source.Entry
}

// Load is what one run of a Preloader reads.
type Load struct {
	// Paths are files or directories, relative to the source.
	Paths []string
	// Limit bounds the bytes read (0: no limit).
	Limit int64
	// Warm is a warm-up with what clients read first rather than a
	// preload the user asked for: paths gone from the origin are skipped,
	// the file that reaches Limit is read up to it (files after it are
	// left out without an error), and its reads yield to the clients'
	// (readahead priority).
	Warm bool
}

// Run reads l's files through ds's workers, calling progress at most
// every second, and returns the final progress. A preload's files beyond
// the limit are left out and counted in the error.
func (p *Preloader) Run(ctx context.Context, ds *v1alpha1.Dataset, l Load, progress func(v1alpha1.PreloadStatus)) (v1alpha1.PreloadStatus, error) {
	bs, par, wait := p.BlockSize, p.Parallel, p.Wait
	if bs <= 0 {
		bs = 4 << 20
	}
	if par <= 0 {
		par = 4
	}
	if wait <= 0 {
		wait = 5 * time.Minute
	}
	st := v1alpha1.PreloadStatus{}
	src, release, err := p.Open(ctx, ds)
	if err != nil {
		return st, err
	}
	defer release()
	if err := waitForWorkers(ctx, src, wait); err != nil {
		return st, err
	}
	files, err := walk(ctx, src, l.Paths, l.Warm)
	if err != nil {
		return st, err
	}
	if l.Warm {
		ctx = source.WithReadahead(ctx)
	}
	var skipped int
	var kept []preloadFile
	for _, f := range files {
		if l.Limit > 0 && st.TotalBytes+f.e.Size > l.Limit {
			if !l.Warm || st.TotalBytes >= l.Limit {
				skipped++
				continue
			}
			f.e.Size = l.Limit - st.TotalBytes // its beginning only
		}
		st.TotalBytes += f.e.Size
		st.TotalFiles++
		kept = append(kept, f)
	}
	start := time.Now()
	var done atomic.Int64
	var mu sync.Mutex
	last := time.Time{}
	report := func(files int64) {
		mu.Lock()
		defer mu.Unlock()
		st.Files += files
		st.Bytes = done.Load()
		if time.Since(last) < time.Second && st.Files < st.TotalFiles {
			return
		}
		last = time.Now()
		if rate := float64(st.Bytes) / time.Since(start).Seconds(); rate > 0 {
			st.ETASeconds = int64(float64(st.TotalBytes-st.Bytes) / rate)
		}
		if progress != nil {
			progress(st)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(par)
	buf := sync.Pool{New: func() any { b := make([]byte, bs); return &b }}
	for _, f := range kept {
		nblocks := (f.e.Size + bs - 1) / bs
		remaining := atomic.Int64{}
		remaining.Store(nblocks)
		if nblocks == 0 {
			report(1)
		}
		for i := int64(0); i < nblocks; i++ {
			off := i * bs
			n := min(bs, f.e.Size-off)
			g.Go(func() error {
				b := buf.Get().(*[]byte)
				defer buf.Put(b)
				if err := src.ReadAt(gctx, f.path, f.e.Version, (*b)[:n], off); err != nil {
					return fmt.Errorf("preloading %s at %d: %w", f.path, off, err)
				}
				done.Add(n)
				if remaining.Add(-1) == 0 {
					report(1)
				} else {
					report(0)
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return st, err
	}
	st.ETASeconds = 0
	if skipped > 0 && !l.Warm {
		return st, fmt.Errorf("%w: %d files left out: they exceed the workers' disk (%d bytes)", errTooBig, skipped, l.Limit)
	}
	klog.InfoS("Loaded the workers", "dataset", klog.KObj(ds), "warm", l.Warm, "files", st.Files, "bytes", st.Bytes,
		"leftOut", skipped, "took", time.Since(start).Round(time.Millisecond))
	return st, nil
}

var errTooBig = errors.New("preload exceeds the cache")

// waitForWorkers retries a stat of the root until a worker answers.
func waitForWorkers(ctx context.Context, src source.Source, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := src.Stat(sctx, "")
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("no cache worker answered within %s: %w", wait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// walk expands paths (files or directories, relative to the source) into
// files, depth first; with skipMissing a path that is not there is left
// out rather than an error.
func walk(ctx context.Context, src source.Source, paths []string, skipMissing bool) ([]preloadFile, error) {
	var out []preloadFile
	seen := map[string]bool{}
	var visit func(p string, e source.Entry) error
	visit = func(p string, e source.Entry) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		if !e.IsDir {
			out = append(out, preloadFile{p, e})
			return nil
		}
		entries, err := src.List(ctx, p)
		if err != nil {
			return fmt.Errorf("listing %q: %w", p, err)
		}
		for _, c := range entries {
			if err := visit(path.Join(p, c.Name), c); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range paths {
		p = path.Clean("/" + p)[1:]
		e, err := src.Stat(ctx, p)
		if skipMissing && errors.Is(err, source.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("preload path %q: %w", p, err)
		}
		if err := visit(p, e); err != nil {
			return nil, err
		}
	}
	return out, nil
}
