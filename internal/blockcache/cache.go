// Package blockcache is sluice's block cache: the one copy of the caching
// code that every component (sluice mount, the CSI node, the FUSE sidecar,
// cache workers) reads through.
//
// Objects are split into fixed-size blocks keyed by (source, object path,
// object version, block index); a changed object has a new version and so
// new keys, and is never served stale. A block is looked up in three tiers:
//
//	memory LRU (bounded bytes) → local disk (sparse file per object version,
//	present-block index with CRC-32C per block) → Getter (origin or workers)
//
// Exactly one fetch per block is in flight per process (singleflight); other
// readers of that block wait for it. A fetched block is served from memory
// at once; its disk copy is written behind (writebehind.go), and dropped
// when the queue is full rather than delaying a reader. Sequential readers (see Reader) trigger
// parallel readahead of the next blocks; random readers do not.
//
// Lock order: Cache has no lock of its own; memoryTier.mu, diskTier.mu and
// writeBehind.mu are leaves and are never held together or across a Getter
// call.
package blockcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sync/singleflight"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
)

// Config configures a Cache. Zero values take the defaults.
type Config struct {
	BlockSize   int64 // default 4 MiB
	MemoryBytes int64 // default 256 MiB
	DiskDir     string
	DiskBytes   int64 // 0 with DiskDir set: default 10 GiB
	// DirectWrites writes disk copies with O_DIRECT (see writebehind.go).
	DirectWrites bool
	Readahead    int // blocks ahead of a sequential reader; 0: none (flags default to DefaultReadahead)
	MaxPrefetch  int // parallel readahead fetches; default 16
	MaxFetches   int // parallel fetches from the tier below; default 32
	// FetchTimeout bounds a fetch's wait for a slot, and then its
	// transfer from the tier below (default 2 min).
	FetchTimeout time.Duration
	Getter       Getter
	Metrics      *metrics.Cache
}

// openFlushTimeout bounds how long an open waits for an object's queued
// disk writes before it settles for reads through the process.
const openFlushTimeout = 2 * time.Second

// Defaults.
const (
	DefaultBlockSize    = 4 << 20
	DefaultMemoryBytes  = 256 << 20
	DefaultDiskBytes    = 10 << 30
	DefaultReadahead    = 8
	DefaultMaxPrefetch  = 16
	DefaultMaxFetches   = 32
	DefaultFetchTimeout = 2 * time.Minute
)

// Cache is a block cache over a Getter. It is safe for concurrent use.
type Cache struct {
	cfg      Config
	mem      *memoryTier
	disk     *diskTier
	behind   *writeBehind // nil without a disk tier
	flights  singleflight.Group
	prefetch chan struct{}
	fetches  *source.Slots
	promos   *promotions
	bg       context.Context
	stop     context.CancelFunc
}

// New builds a Cache, loading the disk tier's index when DiskDir is set.
func New(cfg Config) (*Cache, error) {
	if cfg.Getter == nil {
		return nil, errors.New("blockcache: no Getter")
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.BlockSize < 4096 || cfg.BlockSize > 1<<30 {
		return nil, fmt.Errorf("blockcache: block size %d out of range [4Ki, 1Gi]", cfg.BlockSize)
	}
	if cfg.MemoryBytes == 0 {
		cfg.MemoryBytes = DefaultMemoryBytes
	}
	if cfg.DiskBytes == 0 {
		cfg.DiskBytes = DefaultDiskBytes
	}
	if cfg.Readahead < 0 {
		return nil, fmt.Errorf("blockcache: readahead %d blocks: want 0 or more", cfg.Readahead)
	}
	if cfg.MaxPrefetch <= 0 {
		cfg.MaxPrefetch = DefaultMaxPrefetch
	}
	if cfg.MaxFetches <= 0 {
		cfg.MaxFetches = DefaultMaxFetches
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = DefaultFetchTimeout
	}
	c := &Cache{cfg: cfg, mem: newMemoryTier(cfg.MemoryBytes), prefetch: make(chan struct{}, cfg.MaxPrefetch),
		fetches: source.NewSlots(cfg.MaxFetches), promos: newPromotions()}
	if cfg.DiskDir != "" {
		d, err := openDiskTier(cfg.DiskDir, cfg.DiskBytes, cfg.BlockSize)
		if err != nil {
			return nil, err
		}
		c.disk = d
		c.behind = newWriteBehind(d.write, int(writeBehindBytes/cfg.BlockSize), cfg.DirectWrites)
	}
	c.bg, c.stop = context.WithCancel(context.Background())
	c.publishSizes()
	return c, nil
}

// BlockSize is the configured block size.
func (c *Cache) BlockSize() int64 { return c.cfg.BlockSize }

// Close stops readahead, writes the disk copies still queued and releases
// the disk tier.
func (c *Cache) Close() {
	c.stop()
	if c.disk != nil {
		c.behind.close()
		c.disk.close()
	}
}

// Stats reports the bytes held by each tier.
func (c *Cache) Stats() (memory, disk int64) {
	memory = c.mem.size()
	if c.disk != nil {
		disk = c.disk.size()
	}
	return memory, disk
}

func (c *Cache) block(obj ObjectRef, index int64) BlockRef {
	return BlockRef{Object: obj, Index: index, BlockSize: c.cfg.BlockSize}
}

// ReadAt reads up to len(p) bytes of obj at off. It returns io.EOF when off
// is at or past the end, and fewer bytes only at the end of the object.
func (c *Cache) ReadAt(ctx context.Context, obj ObjectRef, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= obj.Size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), obj.Size)
	for pos := off; pos < end; {
		b := c.block(obj, pos/c.cfg.BlockSize)
		inOff := pos - b.Offset()
		n := min(end-pos, b.Len()-inOff)
		if err := c.readBlock(ctx, b, p[pos-off:pos-off+n], inOff); err != nil {
			return int(pos - off), err
		}
		pos += n
	}
	n := int(end - off)
	c.cfg.Metrics.Served(n)
	return n, nil
}

func (c *Cache) readBlock(ctx context.Context, b BlockRef, dst []byte, inOff int64) error {
	key := b.Key()
	if data, _, ok := c.mem.get(key); ok {
		c.cfg.Metrics.Hit(metrics.TierMemory)
		copy(dst, data[inOff:])
		return nil
	}
	c.cfg.Metrics.Miss(metrics.TierMemory)
	if hit, _ := c.readDisk(b, key, dst, inOff); hit {
		return nil
	}
	data, _, err := c.fetch(ctx, b, key, false)
	if err != nil {
		return err
	}
	copy(dst, data[inOff:])
	return nil
}

// Block returns the whole block b and its CRC-32C, for servers that send
// blocks on (the cache workers). The slice is shared: never modify it.
func (c *Cache) Block(ctx context.Context, b BlockRef) ([]byte, uint32, error) {
	key := b.Key()
	if data, crc, ok := c.mem.get(key); ok {
		c.cfg.Metrics.Hit(metrics.TierMemory)
		c.cfg.Metrics.Served(len(data))
		return data, crc, nil
	}
	c.cfg.Metrics.Miss(metrics.TierMemory)
	data, crc, err := c.fetch(ctx, b, key, source.IsReadahead(ctx))
	if err == nil {
		c.cfg.Metrics.Served(len(data))
	}
	return data, crc, err
}

// readDisk serves a block from the disk tier, promoting it to memory when it
// was read whole for verification; it returns the block's stored CRC-32C.
func (c *Cache) readDisk(b BlockRef, key string, dst []byte, inOff int64) (hit bool, crc uint32) {
	if c.disk == nil {
		return false, 0
	}
	r, err := c.disk.read(b, dst, inOff)
	if r.corrupt {
		c.cfg.Metrics.Corrupt()
		klog.InfoS("Cached block failed its checksum; fetching it again", "path", b.Object.Path, "block", b.Index)
	}
	if err != nil || !r.hit {
		c.cfg.Metrics.Miss(metrics.TierDisk)
		return false, 0
	}
	c.cfg.Metrics.Hit(metrics.TierDisk)
	if r.full != nil {
		c.putMemory(key, r.full, r.crc)
	}
	return true, r.crc
}

// fetch gets a block from the tier below, once per block however many
// readers ask. The fetch runs on the cache's own context so that one reader
// giving up does not fail the others; each waiter honours its own ctx. A
// readahead fetch waits behind demand fetches for a slot and tells the tier
// below it is readahead (source.WithReadahead) — unless a reader joins it
// first, which makes it a demand fetch (promote.go).
func (c *Cache) fetch(ctx context.Context, b BlockRef, key string, readahead bool) ([]byte, uint32, error) {
	if !readahead {
		c.promos.demand(key)
	}
	ch := c.flights.DoChan(key, func() (any, error) {
		pr := c.promos.enter(key)
		defer c.promos.leave(key, pr)
		if data, crc, ok := c.mem.get(key); ok {
			return memEntry{data: data, crc: crc}, nil
		}
		if c.behind != nil {
			if data, crc, ok := c.behind.lookup(key); ok {
				c.putMemory(key, data, crc)
				return memEntry{data: data, crc: crc}, nil
			}
		}
		if c.disk != nil && c.disk.has(b) {
			buf := make([]byte, b.Len())
			if hit, crc := c.readDisk(b, key, buf, 0); hit {
				return memEntry{data: buf, crc: crc}, nil
			}
		}
		// The wait for a slot and the transfer each get the whole budget:
		// a transfer cut short because its slot came late would leave
		// the bytes it had for the next attempt to fetch again.
		wctx, cancelWait := context.WithTimeout(c.bg, c.cfg.FetchTimeout)
		err := c.fetches.AcquirePromotable(wctx, readahead, pr.ch)
		cancelWait()
		if err != nil {
			return nil, err
		}
		defer c.fetches.Release()
		fctx, cancel := context.WithTimeout(c.bg, c.cfg.FetchTimeout)
		defer cancel()
		if readahead && !c.promos.promoted(pr) {
			fctx = source.WithReadahead(fctx)
		}
		buf := make([]byte, b.Len())
		start := time.Now()
		crc, known, err := c.get(fctx, b, buf)
		c.cfg.Metrics.Fetched(len(buf), time.Since(start), err)
		if err != nil {
			return nil, fmt.Errorf("fetching block %d of %s: %w", b.Index, b.Object.Path, err)
		}
		if !known {
			crc = Checksum(buf)
		}
		c.putMemory(key, buf, crc)
		if c.disk != nil && !c.behind.submit(b, buf, crc) {
			c.cfg.Metrics.DiskDropped()
		}
		c.publishSizes()
		return memEntry{data: buf, crc: crc}, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, 0, r.Err
		}
		e := r.Val.(memEntry)
		return e.data, e.crc, nil
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
}

// get fetches b into buf from the tier below, with the block's checksum
// when that tier sent one it checked.
func (c *Cache) get(ctx context.Context, b BlockRef, buf []byte) (uint32, bool, error) {
	if cg, ok := c.cfg.Getter.(checksumGetter); ok {
		return cg.GetBlockChecksum(ctx, b, buf)
	}
	return 0, false, c.cfg.Getter.GetBlock(ctx, b, buf)
}

func (c *Cache) putMemory(key string, data []byte, crc uint32) {
	for range c.mem.put(key, data, crc) {
		c.cfg.Metrics.Evicted(metrics.TierMemory)
	}
}

func (c *Cache) publishSizes() {
	if c.cfg.Metrics != nil {
		m, d := c.Stats()
		c.cfg.Metrics.SetSizes(m, d)
	}
}

// present reports whether a block is in memory, queued for the disk or
// on it.
func (c *Cache) present(b BlockRef) bool {
	if c.mem.contains(b.Key()) {
		return true
	}
	if c.disk == nil {
		return false
	}
	if _, _, ok := c.behind.lookup(b.Key()); ok {
		return true
	}
	return c.disk.has(b)
}

// Prefetch fetches blocks [from, to] of obj in the background, at most
// MaxPrefetch at a time across the cache. Blocks already present are skipped.
func (c *Cache) Prefetch(obj ObjectRef, from, to int64) {
	last := nblocks(obj.Size, c.cfg.BlockSize) - 1
	for i := max(from, 0); i <= min(to, last); i++ {
		b := c.block(obj, i)
		if c.present(b) {
			continue
		}
		go func() {
			select {
			case c.prefetch <- struct{}{}:
			case <-c.bg.Done():
				return
			}
			defer func() { <-c.prefetch }()
			if _, _, err := c.fetch(c.bg, b, b.Key(), true); err != nil {
				klog.V(4).InfoS("Readahead failed", "path", b.Object.Path, "block", b.Index, "err", err)
			}
		}()
	}
}

// OpenLocal returns a read-only file holding obj's bytes when every block is
// on the local disk (for kernel FUSE passthrough). The object stays pinned
// on disk until release is called.
func (c *Cache) OpenLocal(obj ObjectRef) (f *os.File, release func(), ok bool) {
	if c.disk == nil || obj.Size == 0 {
		return nil, nil, false
	}
	// A file read just now may still have blocks in the write-behind
	// queue: wait for them rather than serve it through this process.
	c.behind.flush(obj, openFlushTimeout)
	return c.disk.openComplete(obj)
}
