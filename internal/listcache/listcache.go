// Package listcache caches a dataset's directory listings for a TTL, so
// lookups, stats and readdirs of a FUSE mount (or a cache worker) cost one
// origin listing per directory per TTL, however many readers ask.
//
// A listing in progress is shared (flight.go): readers of the directory
// (Entries) and lookups of names already listed are answered from its
// pages as they arrive, so the first entries of a directory of 100,000
// objects are served before the last ones are listed. The cache holds at
// most maxEntries entries over all its listings; past that, the listings
// fetched longest ago go first.
package listcache

import (
	"context"
	"fmt"
	"path"
	"sort"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
)

const (
	// maxDirs bounds the number of cached listings.
	maxDirs = 50000
	// maxEntries bounds the entries of all cached listings: about 150
	// bytes each with an S3 ETag, so about 300 MiB at most.
	maxEntries = 2_000_000
)

// Cache is a TTL cache of directory listings. Safe for concurrent use.
type Cache struct {
	src        source.Source
	ttl        time.Duration
	now        func() time.Time
	maxEntries int

	mu      sync.Mutex
	dirs    map[string]*listing
	entries int // over dirs
	flights map[string]*flight
}

type listing struct {
	entries []source.Entry // sorted by name
	fetched time.Time
}

// New returns a Cache over src. ttl <= 0 means every call lists the origin.
func New(src source.Source, ttl time.Duration) *Cache {
	return &Cache{src: src, ttl: ttl, now: time.Now, maxEntries: maxEntries,
		dirs: map[string]*listing{}, flights: map[string]*flight{}}
}

// Source is the origin this cache lists.
func (c *Cache) Source() source.Source { return c.src }

// TTL is the metadata time-to-live.
func (c *Cache) TTL() time.Duration { return c.ttl }

// current returns the fresh cached listing of dir, or else the flight
// listing it (started when there is none).
func (c *Cache) current(dir string) (*listing, *flight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.dirs[dir]; l != nil && c.now().Sub(l.fetched) < c.ttl {
		return l, nil
	}
	f := c.flights[dir]
	if f == nil {
		f = newFlight()
		c.flights[dir] = f
		go c.fly(dir, f)
	}
	return nil, f
}

// Listed returns the cached listing of dir without waiting for one;
// ok is false when it is not at hand.
func (c *Cache) Listed(dir string) ([]source.Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.dirs[dir]; l != nil && c.now().Sub(l.fetched) < c.ttl {
		return l.entries, true
	}
	return nil, false
}

// List returns the entries of dir ("" is the root), sorted by name.
func (c *Cache) List(ctx context.Context, dir string) ([]source.Entry, error) {
	l, f := c.current(dir)
	if l != nil {
		return l.entries, nil
	}
	entries, err := f.wait(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing %q: %w", dir, err)
	}
	return entries, nil
}

// Lookup returns the entry called name in dir, or an error wrapping
// source.ErrNotFound. While dir is being listed, a name already listed is
// answered at once.
func (c *Cache) Lookup(ctx context.Context, dir, name string) (source.Entry, error) {
	l, f := c.current(dir)
	entries := []source.Entry(nil)
	if l != nil {
		entries = l.entries
	} else {
		e, found, all, err := f.lookup(ctx, name)
		switch {
		case err != nil:
			return source.Entry{}, fmt.Errorf("listing %q: %w", dir, err)
		case found:
			return e, nil
		}
		entries = all
	}
	i := sort.Search(len(entries), func(i int) bool { return entries[i].Name >= name })
	if i < len(entries) && entries[i].Name == name {
		return entries[i], nil
	}
	return source.Entry{}, fmt.Errorf("%s: %w", path.Join(dir, name), source.ErrNotFound)
}

// Stat returns the entry at p ("" is the root directory).
func (c *Cache) Stat(ctx context.Context, p string) (source.Entry, error) {
	if p == "" {
		return source.Entry{IsDir: true}, nil
	}
	dir, name := path.Split(p)
	return c.Lookup(ctx, path.Clean("/" + dir)[1:], name)
}

// store caches a finished listing of dir, making room under maxDirs and
// maxEntries: expired listings go first, then the oldest. Called with mu
// held.
func (c *Cache) store(dir string, entries []source.Entry) {
	c.forget(dir)
	for len(c.dirs) > 0 && (len(c.dirs) >= maxDirs || c.entries+len(entries) > c.maxEntries) {
		oldest, at := "", time.Time{}
		for k, l := range c.dirs {
			if c.now().Sub(l.fetched) >= c.ttl {
				oldest = k
				break
			}
			if at.IsZero() || l.fetched.Before(at) {
				oldest, at = k, l.fetched
			}
		}
		c.forget(oldest)
	}
	c.dirs[dir] = &listing{entries: entries, fetched: c.now()}
	c.entries += len(entries)
}

// forget drops the listing of dir. Called with mu held.
func (c *Cache) forget(dir string) {
	if l := c.dirs[dir]; l != nil {
		c.entries -= len(l.entries)
		delete(c.dirs, dir)
	}
}

// Invalidate forgets the listing of one directory (and a listing of it in
// progress, which then ends uncached).
func (c *Cache) Invalidate(dir string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forget(dir)
	delete(c.flights, dir)
}

// Refresh forgets every cached listing, so the next call lists the origin.
func (c *Cache) Refresh() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dirs, c.entries, c.flights = map[string]*listing{}, 0, map[string]*flight{}
}
