// Package fetch copies a dataset, or part of it, into a local directory
// through the same source as a mount: the cache workers (with the pod's
// token) or the origin. It is `sluice fetch` and the copy-mode init
// container the webhook injects where a pod may not use FUSE.
//
// Blocks of the cache's block size (the cache workers' unit, so a worker
// answers each from its cached block) are read by Parallel goroutines,
// each into a buffer of its own that is reused for every block; a read
// through the workers arrives with its CRC-32C checked, and every read has
// exactly the block's length or fails. Each file is written under a
// temporary name beside its final one (".NAME.sluice-partial"), gets the
// origin's modification time and its version (extended attribute
// user.sluice.version, where the file system has them), and is renamed
// when complete, so nothing partial ever carries a final name. A rerun
// skips files whose size and version (or, without extended attributes,
// size and mtime) match the origin, and copies the rest again.
package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
)

// Config is one copy.
type Config struct {
	// Source is read from; Root is the dataset path copied ("" the whole
	// dataset; a file copies that one file).
	Source source.Source
	Root   string
	// Dir receives the copy (created if missing).
	Dir string
	// Include, when set, copies only the files whose path below Root
	// matches one of these globs (path.Match; "**/" matches any depth of
	// directories).
	Include []string
	// BlockSize is the unit of each read (default 4 MiB); Parallel the
	// reads in flight (default 16).
	BlockSize int64
	Parallel  int
	// Progress, when set, receives a progress line every ProgressEvery
	// (default 1 s) and a summary at the end.
	Progress      io.Writer
	ProgressEvery time.Duration
	// Metrics counts the bytes copied as served (nil: none).
	Metrics *metrics.Cache
}

// Result says what a copy did.
type Result struct {
	Files, Skipped int
	Bytes          int64
	Elapsed        time.Duration
}

// partialSuffix marks a file being copied.
const partialSuffix = ".sluice-partial"

// Run copies cfg.Root into cfg.Dir. An error names the file and its cause;
// every partial file of the run is removed before Run returns.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.BlockSize <= 0 {
		cfg.BlockSize = 4 << 20
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 16
	}
	for _, g := range cfg.Include {
		if _, err := path.Match(strings.ReplaceAll(g, "**/", ""), ""); err != nil {
			return Result{}, fmt.Errorf("--include %q: %w", g, err)
		}
	}
	start := time.Now()
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return Result{}, fmt.Errorf("destination %s: %w", cfg.Dir, err)
	}
	plan, err := walk(ctx, cfg)
	if err != nil {
		return Result{}, err
	}
	r := &run{cfg: cfg, plan: plan, start: start}
	err = r.copyAll(ctx)
	res := Result{Files: int(r.files.Load()), Skipped: r.skipped, Bytes: r.bytes.Load(), Elapsed: time.Since(start)}
	if cfg.Progress != nil {
		r.summary(res, err)
	}
	return res, err
}

// item is one file to copy: its dataset path, its path below Dir, and the
// origin's entry.
type item struct {
	src, rel string
	e        source.Entry
}

type plan struct {
	items []item
	total int64
}

// run is one copy in progress.
type run struct {
	cfg     Config
	plan    plan
	start   time.Time
	skipped int
	files   atomic.Int64
	bytes   atomic.Int64
	mu      sync.Mutex // guards partial
	partial map[string]*os.File
}

// copyAll copies every file of the plan, Parallel blocks at a time.
func (r *run) copyAll(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r.partial = map[string]*os.File{}
	defer r.removePartials()
	var todo []*file
	for _, it := range r.plan.items {
		if r.complete(it) {
			r.skipped++
			r.bytes.Add(it.e.Size)
			klog.V(1).InfoS("Already copied", "path", it.rel)
			continue
		}
		f, err := r.open(it)
		if err != nil {
			return err
		}
		todo = append(todo, f)
	}
	stopProgress := r.progress(ctx)
	defer stopProgress()
	jobs := make(chan job)
	var wg sync.WaitGroup
	for i := 0; i < r.cfg.Parallel; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, r.cfg.BlockSize) // reused for every block
			for j := range jobs {
				if err := r.copyBlock(ctx, j, buf); err != nil {
					cancel(err)
				}
			}
		}()
	}
	for _, f := range todo {
		for off := int64(0); off < f.it.e.Size; off += r.cfg.BlockSize {
			select {
			case jobs <- job{f: f, off: off}:
			case <-ctx.Done():
			}
		}
		if f.it.e.Size == 0 {
			if err := r.finish(f); err != nil {
				cancel(err)
			}
		}
	}
	close(jobs)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// job is one block of one file.
type job struct {
	f   *file
	off int64
}

// file is a file being copied: its partial file and blocks left.
type file struct {
	it      item
	tmp     string
	final   string
	out     *os.File
	pending atomic.Int64
}

// open creates the partial file of it.
func (r *run) open(it item) (*file, error) {
	final := filepath.Join(r.cfg.Dir, filepath.FromSlash(it.rel))
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return nil, fmt.Errorf("fetch %q: %w", it.rel, err)
	}
	tmp := filepath.Join(filepath.Dir(final), "."+filepath.Base(final)+partialSuffix)
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("fetch %q: %w", it.rel, err)
	}
	r.mu.Lock()
	r.partial[tmp] = out
	r.mu.Unlock()
	f := &file{it: it, tmp: tmp, final: final, out: out}
	f.pending.Store((it.e.Size + r.cfg.BlockSize - 1) / r.cfg.BlockSize)
	if err := out.Truncate(it.e.Size); err != nil {
		return nil, fmt.Errorf("fetch %q: %w", it.rel, err)
	}
	return f, nil
}

// copyBlock reads one block into buf and writes it at its offset; the
// file's last block finishes it.
func (r *run) copyBlock(ctx context.Context, j job, buf []byte) error {
	if ctx.Err() != nil {
		return nil
	}
	f := j.f
	n := min(r.cfg.BlockSize, f.it.e.Size-j.off)
	b := buf[:n]
	var err error
	if cr, ok := r.cfg.Source.(source.ChecksumReader); ok {
		_, err = cr.ReadAtChecksum(ctx, f.it.src, f.it.e.Version, b, j.off)
	} else {
		err = r.cfg.Source.ReadAt(ctx, f.it.src, f.it.e.Version, b, j.off)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // another block failed first
		}
		return fmt.Errorf("fetch %q at offset %d: %w", f.it.rel, j.off, err)
	}
	if _, err := f.out.WriteAt(b, j.off); err != nil {
		return fmt.Errorf("fetch %q: write %s: %w", f.it.rel, f.tmp, err)
	}
	r.bytes.Add(n)
	if r.cfg.Metrics != nil {
		r.cfg.Metrics.Served(int(n))
	}
	if f.pending.Add(-1) == 0 {
		return r.finish(f)
	}
	return nil
}

// finish gives a complete file its mtime and version and its final name.
func (r *run) finish(f *file) error {
	r.mu.Lock()
	delete(r.partial, f.tmp)
	r.mu.Unlock()
	err := f.out.Close()
	if err == nil {
		err = r.settle(f)
	}
	if err != nil {
		os.Remove(f.tmp)
		return fmt.Errorf("fetch %q: %w", f.it.rel, err)
	}
	r.files.Add(1)
	klog.V(1).InfoS("Copied", "path", f.it.rel, "bytes", f.it.e.Size)
	return nil
}

// settle gives f's complete partial file its mtime, version and final name.
func (r *run) settle(f *file) error {
	if !f.it.e.ModTime.IsZero() {
		if err := os.Chtimes(f.tmp, f.it.e.ModTime, f.it.e.ModTime); err != nil {
			return err
		}
	}
	setVersion(f.tmp, f.it.e.Version)
	return os.Rename(f.tmp, f.final)
}

// removePartials removes the partial files of a copy that ended early.
func (r *run) removePartials() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p, f := range r.partial {
		f.Close()
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			klog.ErrorS(err, "Could not remove a partial file", "path", p)
		}
	}
}

// complete reports whether it was copied by an earlier run.
func (r *run) complete(it item) bool {
	st, err := os.Stat(filepath.Join(r.cfg.Dir, filepath.FromSlash(it.rel)))
	if err != nil || !st.Mode().IsRegular() || st.Size() != it.e.Size {
		return false
	}
	if v, ok := version(filepath.Join(r.cfg.Dir, filepath.FromSlash(it.rel))); ok {
		return v == it.e.Version
	}
	return !it.e.ModTime.IsZero() && st.ModTime().Equal(it.e.ModTime)
}
