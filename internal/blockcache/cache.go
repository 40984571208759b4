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
// readers of that block wait for it, or only for their part of it when the
// tier below streams (partial.go). A fetched block is served from memory
// at once; its disk copy is written behind (writebehind.go), and dropped
// when the queue is full rather than delaying a reader. Sequential readers (see Reader) trigger
// parallel readahead of the next blocks; random readers do not.
//
// Blocks live in reference-counted buffers from a pool (pool.go) that is
// bounded by MemoryBytes: the memory tier, a fetch in flight, a queued
// disk write, a reader and a FUSE reply each hold a reference, and a
// buffer is reused only once the last one is released (reads hand out
// leases on cached blocks instead of copies: lease.go).
//
// Lock order: Cache has no lock of its own; memoryTier.mu is held before
// bufferPool.mu (an eviction returns a buffer); flights.mu, diskTier.mu,
// writeBehind.mu and bufferPool.mu are leaves. None is held across a Getter
// call or another tier's lock.
package blockcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

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
	pool     *bufferPool
	flights  *flights
	prefetch chan struct{}
	fetches  *source.Slots
	ranges   BlockRangeReader // nil: the tier below answers whole blocks only
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
		fetches: source.NewSlots(cfg.MaxFetches), flights: newFlights(isPeersFirst(cfg.Getter)), ranges: rangeReaderOf(cfg.Getter)}
	c.pool = newBufferPool(int(cfg.BlockSize), int(cfg.MemoryBytes/cfg.BlockSize), c.reclaim)
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
	c.mem.clear()
	c.pool.close()
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
	l, err := c.Read(ctx, obj, p, off)
	if l == nil {
		return 0, err
	}
	n := l.CopyTo(p)
	l.Release()
	return n, err
}

// Read reads like ReadAt but leaves the bytes where they are: a block in
// memory is referenced by the returned Lease, not copied; a block read
// from the disk tier goes into p. The lease holds fewer bytes only at the
// end of the object or with an error; the caller releases it.
func (c *Cache) Read(ctx context.Context, obj ObjectRef, p []byte, off int64) (*Lease, error) {
	return c.read(ctx, obj, p, off, true)
}

// read is Read; ranged lets a read that starts a block's fetch ask the
// tier below for its own range too (fetchPart).
func (c *Cache) read(ctx context.Context, obj ObjectRef, p []byte, off int64, ranged bool) (*Lease, error) {
	if off < 0 {
		return nil, fmt.Errorf("negative offset %d", off)
	}
	if off >= obj.Size {
		return nil, io.EOF
	}
	l := newLease()
	end := min(off+int64(len(p)), obj.Size)
	for pos := off; pos < end; {
		b := c.block(obj, pos/c.cfg.BlockSize)
		inOff := pos - b.Offset()
		n := min(end-pos, b.Len()-inOff)
		if err := c.readBlock(ctx, b, p[pos-off:pos-off+n], inOff, l, ranged); err != nil {
			return l, err
		}
		pos += n
	}
	c.cfg.Metrics.Served(l.Len())
	return l, nil
}

func (c *Cache) readBlock(ctx context.Context, b BlockRef, dst []byte, inOff int64, l *Lease, ranged bool) error {
	key := b.Key()
	if buf, _, ok := c.mem.get(key); ok {
		c.cfg.Metrics.Hit(metrics.TierMemory)
		l.add(buf, buf.data[inOff:inOff+int64(len(dst))])
		return nil
	}
	c.cfg.Metrics.Miss(metrics.TierMemory)
	// A small read of a block on disk reads just its bytes; a large one
	// (sequential readers ask for 1 MiB) loads the whole block through
	// its flight (fly: from the disk, else from the tier below).
	if !c.wholeFromDisk(b, len(dst)) {
		if hit, _ := c.readDisk(b, key, dst, inOff); hit {
			l.add(nil, dst)
			return nil
		}
	}
	return c.fetchPart(ctx, b, key, dst, inOff, l, ranged)
}

// Block returns the whole block b and its CRC-32C, for servers that send
// blocks on (the cache workers). The bytes are the cached block's own:
// never modify them, and call release once they are sent.
func (c *Cache) Block(ctx context.Context, b BlockRef) (data []byte, crc uint32, release func(), err error) {
	key := b.Key()
	buf, crc, ok := c.mem.get(key)
	if ok {
		c.cfg.Metrics.Hit(metrics.TierMemory)
	} else {
		c.cfg.Metrics.Miss(metrics.TierMemory)
		if buf, crc, err = c.fetch(ctx, b, key, source.IsReadahead(ctx)); err != nil {
			return nil, 0, nil, err
		}
	}
	c.cfg.Metrics.Served(len(buf.data))
	return buf.data, crc, buf.release, nil
}

// readDisk serves a block from the disk tier, promoting it to memory when it
// was read whole for verification; it returns the block's stored CRC-32C.
func (c *Cache) readDisk(b BlockRef, key string, dst []byte, inOff int64) (hit bool, crc uint32) {
	if c.disk == nil {
		return false, 0
	}
	r, err := c.disk.read(b, dst, inOff, c.pool.get)
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
		r.full.release()
	}
	return true, r.crc
}

// wholeFromDisk reports whether a read of n bytes of block b is served by
// loading the whole block from the disk tier into memory: when the read is
// large (at least an eighth of a block) and the block's buffer is pooled.
func (c *Cache) wholeFromDisk(b BlockRef, n int) bool {
	return c.disk != nil && int64(n) >= c.cfg.BlockSize/8 && b.Len() >= c.cfg.BlockSize/2
}

// readDiskWhole loads block b from the disk tier into a pooled buffer
// (O_DIRECT where it is not in the page cache: direct.go) and keeps it in
// memory. It returns the buffer with a reference and its checksum, or nil
// when the disk does not hold the block. The caller checks wholeFromDisk.
func (c *Cache) readDiskWhole(b BlockRef, key string) (*buffer, uint32) {
	if !c.disk.has(b) {
		c.cfg.Metrics.Miss(metrics.TierDisk)
		return nil, 0
	}
	buf := c.pool.get(int(b.Len()))
	r, err := c.disk.readWhole(b, buf.data)
	if r.corrupt {
		c.cfg.Metrics.Corrupt()
		klog.InfoS("Cached block failed its checksum; fetching it again", "path", b.Object.Path, "block", b.Index)
	}
	if err != nil || !r.hit {
		c.cfg.Metrics.Miss(metrics.TierDisk)
		buf.release()
		return nil, 0
	}
	c.cfg.Metrics.Hit(metrics.TierDisk)
	c.putMemory(key, buf, r.crc)
	return buf, r.crc
}

// fetch gets a block from the tier below, once per block however many
// readers ask (flights.go), and returns it with a reference the caller
// releases. The fetch runs on the cache's own context so that one reader
// giving up does not fail the others; each waiter honours its own ctx. A
// readahead fetch waits behind demand fetches for a slot and tells the
// tier below it is readahead (source.WithReadahead) — unless a reader
// joins it first, which makes it a demand fetch.
func (c *Cache) fetch(ctx context.Context, b BlockRef, key string, readahead bool) (*buffer, uint32, error) {
	f, _ := c.flights.join(key, readahead, c.run(b, key, readahead, c.get))
	return c.flights.wait(ctx, f)
}

// getFunc fills a block's buffer from below, with its checksum when known.
type getFunc func(ctx context.Context, b BlockRef, p []byte) (crc uint32, known bool, err error)

// run is the work of block b's flight, fetching with get.
func (c *Cache) run(b BlockRef, key string, readahead bool, get getFunc) func(*flight) {
	return func(f *flight) {
		buf, crc, err := c.fly(b, key, readahead, f, get)
		c.flights.finish(key, f, buf, crc, err)
		if buf != nil {
			buf.release()
		}
	}
}

// fly is one flight's work: the block from memory, the write-behind queue,
// the disk or the tier below, with one reference for the flight.
func (c *Cache) fly(b BlockRef, key string, readahead bool, f *flight, get getFunc) (*buffer, uint32, error) {
	if buf, crc, ok := c.local(b, key); ok {
		return buf, crc, nil
	}
	// The wait for a slot and the transfer each get the whole budget:
	// a transfer cut short because its slot came late would leave
	// the bytes it had for the next attempt to fetch again.
	wctx, cancelWait := context.WithTimeout(c.bg, c.cfg.FetchTimeout)
	err := c.fetches.AcquirePromotable(wctx, readahead, f.promote)
	cancelWait()
	if err != nil {
		return nil, 0, err
	}
	defer c.fetches.Release()
	fctx, cancel := context.WithTimeout(c.bg, c.cfg.FetchTimeout)
	defer cancel()
	fctx = c.flights.withFlight(fctx, f)
	if readahead && !c.flights.isPromoted(f) {
		fctx = source.WithReadahead(fctx)
	}
	buf := c.pool.get(int(b.Len()))
	c.flights.setBuf(f, buf)
	if c.ranges == nil { // the tier below streams: readers of part of the block need not wait for all
		fctx = source.WithProgress(fctx, func(n int) { c.flights.progressed(f, n) })
	}
	start := time.Now()
	crc, known, err := get(fctx, b, buf.data)
	c.cfg.Metrics.Fetched(len(buf.data), time.Since(start), err)
	if err != nil {
		c.flights.dropBuf(f)
		buf.release()
		return nil, 0, fmt.Errorf("fetching block %d of %s: %w", b.Index, b.Object.Path, err)
	}
	if !known {
		crc = Checksum(buf.data)
	}
	c.putMemory(key, buf, crc)
	if c.disk != nil && !c.behind.submit(b, buf, crc) {
		c.cfg.Metrics.DiskDropped()
	}
	c.publishSizes()
	return buf, crc, nil
}

// local returns block b from memory, the write-behind queue or the disk,
// with a reference for the caller; ok is false when this cache has it in
// none of them.
func (c *Cache) local(b BlockRef, key string) (*buffer, uint32, bool) {
	if buf, crc, ok := c.mem.get(key); ok {
		return buf, crc, true
	}
	if c.behind != nil {
		if buf, crc, ok := c.behind.lookup(key); ok {
			c.putMemory(key, buf, crc)
			return buf, crc, true
		}
	}
	if c.wholeFromDisk(b, int(b.Len())) {
		if buf, crc := c.readDiskWhole(b, key); buf != nil {
			return buf, crc, true
		}
	} else if c.disk != nil && c.disk.has(b) { // a small block: a heap buffer of its size
		buf := c.pool.get(int(b.Len()))
		if hit, crc := c.readDisk(b, key, buf.data, 0); hit {
			c.putMemory(key, buf, crc)
			return buf, crc, true
		}
		buf.release()
	}
	return nil, 0, false
}

// Held is Block for a block this cache holds (in memory, queued for the
// disk or on it) or is fetching (the caller waits for that fetch, unless
// it is asking peers and the caller's WithPeerRank does not rank below
// this cache: askpeers.go); it never asks the tier below. ok is
// false when the cache has no such block. A cache worker answers its peers
// with it (cacheserver.PeerHeader).
func (c *Cache) Held(ctx context.Context, b BlockRef) (data []byte, crc uint32, release func(), ok bool, err error) {
	key := b.Key()
	asker, ranked := askerRank(ctx)
	if f := c.flights.joinExisting(key, source.IsReadahead(ctx), asker, ranked); f != nil {
		buf, crc, err := c.flights.wait(ctx, f)
		if err != nil {
			return nil, 0, nil, false, err
		}
		c.cfg.Metrics.Served(len(buf.data))
		return buf.data, crc, buf.release, true, nil
	}
	buf, crc, ok := c.local(b, key)
	if !ok {
		return nil, 0, nil, false, nil
	}
	c.cfg.Metrics.Served(len(buf.data))
	return buf.data, crc, buf.release, true, nil
}

// get fetches b into buf from the tier below, with the block's checksum
// when that tier sent one it checked.
func (c *Cache) get(ctx context.Context, b BlockRef, buf []byte) (uint32, bool, error) {
	if cg, ok := c.cfg.Getter.(checksumGetter); ok {
		return cg.GetBlockChecksum(ctx, b, buf)
	}
	return 0, false, c.cfg.Getter.GetBlock(ctx, b, buf)
}

func (c *Cache) putMemory(key string, buf *buffer, crc uint32) {
	for range c.mem.put(key, buf, crc) {
		c.cfg.Metrics.Evicted(metrics.TierMemory)
	}
}

// reclaim drops the least recently used block from memory that nothing
// else holds, so that the pool can reuse its buffer.
func (c *Cache) reclaim() bool {
	if !c.mem.evictFree() {
		return false
	}
	c.cfg.Metrics.Evicted(metrics.TierMemory)
	return true
}

func (c *Cache) publishSizes() {
	if c.cfg.Metrics != nil {
		m, d := c.Stats()
		c.cfg.Metrics.SetSizes(m, d)
	}
}

// OpenLocal returns the disk tier's file holding obj's bytes when every
// block is on the local disk (for kernel FUSE passthrough). The file is the
// tier's own: read it with ReadAt or hand its descriptor to the kernel, and
// do not close it. The object stays pinned on disk, and the file open,
// until release is called.
func (c *Cache) OpenLocal(obj ObjectRef) (f *os.File, release func(), ok bool) {
	if c.disk == nil || obj.Size == 0 {
		return nil, nil, false
	}
	// A file read just now may still have blocks in the write-behind
	// queue: wait for them rather than serve it through this process.
	c.behind.flush(obj, openFlushTimeout)
	return c.disk.openComplete(obj)
}
