package blockcache

import (
	"context"

	"k8s.io/klog/v2"
)

// present reports whether readahead has nothing to do for a block: it is
// in memory or queued for the disk, or on the disk and read from there in
// place (blocks loaded whole from the disk are read ahead into memory).
func (c *Cache) present(b BlockRef, id string) bool {
	key := blockKey(id, b.Index)
	if c.mem.contains(key) {
		return true
	}
	if c.disk == nil {
		return false
	}
	if c.behind.has(key) {
		return true
	}
	return !c.wholeFromDisk(b, int(b.Len())) && c.disk.holds(id, b.Index)
}

// Prefetch fetches blocks [from, to] of obj in the background, at most
// MaxPrefetch at a time across the cache. Blocks already present are skipped.
func (c *Cache) Prefetch(obj ObjectRef, from, to int64) {
	last := nblocks(obj.Size, c.cfg.BlockSize) - 1
	id := obj.id()
	for i := max(from, 0); i <= min(to, last); i++ {
		b := c.block(obj, i)
		if c.present(b, id) {
			continue
		}
		go func() {
			select {
			case c.prefetch <- struct{}{}:
			case <-c.bg.Done():
				return
			}
			defer func() { <-c.prefetch }()
			buf, _, err := c.fetch(c.bg, b, b.Key(), true)
			if err != nil {
				klog.V(4).InfoS("Readahead failed", "path", b.Object.Path, "block", b.Index, "err", err)
				return
			}
			buf.release()
		}()
	}
}

// Holds reports whether the cache holds b in any tier or is fetching it,
// without reading it or touching the LRU order.
func (c *Cache) Holds(b BlockRef) bool {
	key := b.Key()
	if c.mem.contains(key) || c.flights.has(key) {
		return true
	}
	return c.disk != nil && (c.behind.has(key) || c.disk.has(b))
}

// Adopt fetches block b with get instead of the tier below, at readahead
// priority, and keeps it like any fetched block; a cache worker takes a
// leaving peer's blocks this way. A block the cache holds or is fetching
// is left as it is (adopted is false).
func (c *Cache) Adopt(ctx context.Context, b BlockRef, get func(ctx context.Context, p []byte) (crc uint32, err error)) (adopted bool, err error) {
	if c.Holds(b) {
		return false, nil
	}
	key := b.Key()
	f, start := c.flights.join(key, true, c.run(b, key, true, func(ctx context.Context, _ BlockRef, p []byte) (uint32, bool, error) {
		crc, err := get(ctx, p)
		return crc, err == nil, err
	}))
	buf, _, err := c.flights.wait(ctx, f)
	if err != nil {
		return false, err
	}
	buf.release()
	return start, nil
}
