package listcache

import (
	"context"
	"fmt"
	"math"
	"sort"
	"sync"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/source"
)

// flight is a listing in progress. Its pages are appended in the origin's
// order as they arrive; readers wait on grew, which is closed (and
// replaced) whenever entries grow and when the listing ends.
type flight struct {
	mu      sync.Mutex
	entries []source.Entry // arrival order; never reordered
	seen    map[string]int // name → index in entries; nil once done
	dropped []string       // names no directory can hold
	grew    chan struct{}
	done    bool
	err     error
	sorted  []source.Entry // the finished listing, sorted by name
}

func newFlight() *flight {
	return &flight{seen: map[string]int{}, grew: make(chan struct{})}
}

// fly lists dir into f, then caches the result unless the cache forgot
// the flight meanwhile (Refresh, Invalidate).
func (c *Cache) fly(dir string, f *flight) {
	err := source.ListPages(context.Background(), c.src, dir, f.add)
	sorted, dropped := f.finish(err)
	if len(dropped) > 0 {
		klog.InfoS("Dropped listing entries no directory can hold (unsafe names)", "source", c.src.ID(),
			"dir", dir, "dropped", len(dropped), "first", fmt.Sprintf("%q", dropped[0]))
	}
	// The listing is cached before its waiters wake, so that whoever
	// waited finds it there.
	c.mu.Lock()
	if c.flights[dir] == f {
		delete(c.flights, dir)
		if err == nil {
			c.store(dir, sorted)
		}
	}
	c.mu.Unlock()
	f.end(err)
}

// add appends one page, dropping what no directory can hold: names that
// are not one safe path element (source.ValidName) and second entries of
// a name (a file wins over a directory of the same name; a page that a
// retry repeats adds nothing). Every source filters its own listings;
// this is the guard for the ones that come from elsewhere (the workers).
func (f *flight) add(page []source.Entry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range page {
		if !source.ValidName(e.Name) {
			f.dropped = append(f.dropped, e.Name)
			continue
		}
		if i, dup := f.seen[e.Name]; dup {
			if f.entries[i].IsDir && !e.IsDir {
				f.entries[i] = e
			}
			continue
		}
		f.seen[e.Name] = len(f.entries)
		f.entries = append(f.entries, e)
	}
	close(f.grew)
	f.grew = make(chan struct{})
	return nil
}

// finish returns the listing sorted by name: the arrival order itself
// when the origin listed in name order (S3 does, but for directories
// among files), else a sorted copy, so that readers part way through the
// arrival order keep it. It also returns the names dropped.
func (f *flight) finish(err error) ([]source.Entry, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		return nil, f.dropped
	}
	sorted := f.entries
	byName := func(i, j int) bool { return sorted[i].Name < sorted[j].Name }
	if !sort.SliceIsSorted(sorted, byName) {
		sorted = append([]source.Entry(nil), f.entries...)
		sort.Slice(sorted, byName)
	}
	f.sorted = sorted
	return sorted, f.dropped
}

// end wakes every waiter: the listing is done, with err.
func (f *flight) end(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done, f.err, f.seen = true, err, nil
	close(f.grew)
}

// await runs check under f.mu until it reports ready, waiting for the
// flight to grow in between; it gives up when ctx ends.
func (f *flight) await(ctx context.Context, check func() bool) error {
	for {
		f.mu.Lock()
		ok, grew := check(), f.grew
		f.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-grew:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// wait returns the finished listing.
func (f *flight) wait(ctx context.Context) ([]source.Entry, error) {
	var out []source.Entry
	var err error
	if werr := f.await(ctx, func() bool { out, err = f.sorted, f.err; return f.done }); werr != nil {
		return nil, werr
	}
	return out, err
}

// lookup returns the entry called name as soon as it is listed (found),
// or, when the listing ends without it, the finished listing.
func (f *flight) lookup(ctx context.Context, name string) (e source.Entry, found bool, all []source.Entry, err error) {
	werr := f.await(ctx, func() bool {
		if i, ok := f.seen[name]; ok {
			e, found = f.entries[i], true
			return true
		}
		all, err = f.sorted, f.err
		return f.done
	})
	if werr != nil {
		return source.Entry{}, false, nil, werr
	}
	return e, found, all, err
}

// Entries reads one directory's listing in order, as it arrives: from the
// cache, or from the flight listing it.
type Entries struct {
	done []source.Entry // a cached listing
	f    *flight
	next int
}

// Entries returns a reader of the listing of dir, from its start.
func (c *Cache) Entries(dir string) *Entries {
	l, f := c.current(dir)
	if l != nil {
		return &Entries{done: l.entries}
	}
	return &Entries{f: f}
}

// Next returns the next entry; ok is false at the end of the listing. It
// waits while the next page is being listed.
func (r *Entries) Next(ctx context.Context) (source.Entry, bool, error) {
	e, ok, err := r.Peek(ctx)
	if ok {
		r.next++
	}
	return e, ok, err
}

// Peek is Next without moving on.
func (r *Entries) Peek(ctx context.Context) (e source.Entry, ok bool, err error) {
	if r.f == nil {
		if r.next >= len(r.done) {
			return source.Entry{}, false, nil
		}
		return r.done[r.next], true, nil
	}
	werr := r.f.await(ctx, func() bool {
		if r.next < len(r.f.entries) {
			e, ok = r.f.entries[r.next], true
			return true
		}
		err = r.f.err
		return r.f.done
	})
	switch {
	case werr != nil:
		return source.Entry{}, false, werr
	case err != nil:
		return source.Entry{}, false, err
	}
	return e, ok, nil
}

// Ready reports whether Next would answer without waiting.
func (r *Entries) Ready() bool {
	if r.f == nil {
		return true
	}
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return r.next < len(r.f.entries) || r.f.done
}

// Seek moves the reader to entry i (0 is the start; past the end, or
// negative, is the end).
func (r *Entries) Seek(i int) {
	if i < 0 {
		i = math.MaxInt
	}
	r.next = i
}
