// Package listcache caches a dataset's directory listings for a TTL, so
// lookups, stats and readdirs of a FUSE mount (or a cache worker) cost one
// origin listing per directory per TTL, however many readers ask.
package listcache

import (
	"context"
	"fmt"
	"path"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/source"
)

// maxDirs bounds the number of cached listings; past it, expired ones go.
const maxDirs = 50000

// Cache is a TTL cache of directory listings. Safe for concurrent use.
type Cache struct {
	src     source.Source
	ttl     time.Duration
	now     func() time.Time
	flights singleflight.Group

	mu   sync.Mutex
	dirs map[string]*listing
}

type listing struct {
	entries []source.Entry // sorted by name
	fetched time.Time
}

// New returns a Cache over src. ttl <= 0 means every call lists the origin.
func New(src source.Source, ttl time.Duration) *Cache {
	return &Cache{src: src, ttl: ttl, now: time.Now, dirs: map[string]*listing{}}
}

// Source is the origin this cache lists.
func (c *Cache) Source() source.Source { return c.src }

// TTL is the metadata time-to-live.
func (c *Cache) TTL() time.Duration { return c.ttl }

// List returns the entries of dir ("" is the root), sorted by name.
func (c *Cache) List(ctx context.Context, dir string) ([]source.Entry, error) {
	c.mu.Lock()
	l := c.dirs[dir]
	c.mu.Unlock()
	if l != nil && c.now().Sub(l.fetched) < c.ttl {
		return l.entries, nil
	}
	v, err, _ := c.flights.Do(dir, func() (any, error) {
		entries, err := c.src.List(context.WithoutCancel(ctx), dir)
		if err != nil {
			return nil, err
		}
		entries = clean(c.src.ID(), dir, entries)
		c.store(dir, entries)
		return entries, nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing %q: %w", dir, err)
	}
	return v.([]source.Entry), nil
}

func (c *Cache) store(dir string, entries []source.Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.dirs) >= maxDirs {
		for k, l := range c.dirs {
			if c.now().Sub(l.fetched) >= c.ttl {
				delete(c.dirs, k)
			}
		}
		if len(c.dirs) >= maxDirs {
			c.dirs = map[string]*listing{}
		}
	}
	c.dirs[dir] = &listing{entries: entries, fetched: c.now()}
}

// Lookup returns the entry called name in dir, or an error wrapping
// source.ErrNotFound.
func (c *Cache) Lookup(ctx context.Context, dir, name string) (source.Entry, error) {
	entries, err := c.List(ctx, dir)
	if err != nil {
		return source.Entry{}, err
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

// clean sorts a listing and drops what no directory can hold: names that
// are not one safe path element (source.ValidName) and second entries of a
// name (a file wins over a directory of the same name). Every source
// filters its own listings; this is the guard for the ones that come from
// elsewhere (the cache workers), logged once per listing.
func clean(src, dir string, entries []source.Entry) []source.Entry {
	sort.SliceStable(entries, func(i, j int) bool {
		if entries[i].Name != entries[j].Name {
			return entries[i].Name < entries[j].Name
		}
		return !entries[i].IsDir && entries[j].IsDir
	})
	out := entries[:0]
	var dropped []string
	for _, e := range entries {
		if !source.ValidName(e.Name) || (len(out) > 0 && out[len(out)-1].Name == e.Name) {
			dropped = append(dropped, e.Name)
			continue
		}
		out = append(out, e)
	}
	if len(dropped) > 0 {
		klog.InfoS("Dropped listing entries no directory can hold (unsafe or repeated names)", "source", src, "dir", dir,
			"dropped", len(dropped), "first", fmt.Sprintf("%q", dropped[0]))
	}
	return out
}

// Invalidate forgets the listing of one directory.
func (c *Cache) Invalidate(dir string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.dirs, dir)
}

// Refresh forgets every cached listing, so the next call lists the origin.
func (c *Cache) Refresh() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dirs = map[string]*listing{}
}
