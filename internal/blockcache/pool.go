package blockcache

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// buffer holds one block's bytes and counts its references: the memory
// tier's, a queued disk write's, each reader's and each FUSE reply's. A
// buffer of a block at least half the block size is pooled: it is mapped
// outside the Go heap, page-aligned (O_DIRECT writes take it as it is), and
// goes back to its pool when the last reference is released, its pages
// already touched, so a block's memory is never faulted in or zeroed
// again. A smaller block (a small object, or an object's short tail) is on
// the Go heap and the garbage collector frees it.
//
// The bytes of a buffer are written once, by the fetch that owns the
// first reference, before any other reference is taken; after that they
// are only read until the last release.
type buffer struct {
	data []byte // the block's bytes
	mem  []byte // the whole mapping (pooled buffers), nil for heap buffers
	refs atomic.Int32
	pool *bufferPool
}

// ref takes another reference.
func (b *buffer) ref() *buffer {
	b.refs.Add(1)
	return b
}

// release drops a reference; the last one returns a pooled buffer.
func (b *buffer) release() {
	switch n := b.refs.Add(-1); {
	case n == 0 && b.pool != nil:
		b.pool.put(b)
	case n < 0:
		panic("blockcache: buffer released more often than referenced")
	}
}

func (b *buffer) releaseIfAny() {
	if b != nil {
		b.release()
	}
}

// cost is what the buffer takes from the memory bound.
func (b *buffer) cost() int64 {
	if b.mem != nil {
		return int64(len(b.mem))
	}
	return int64(len(b.data))
}

// bufferPool hands out block buffers and keeps about limit of them
// mapped. When all are taken it asks reclaim (the memory tier) to drop a
// block nothing else holds; when there is none (every mapped buffer is
// held by a fetch, a queued write or a reader, which all let go within
// milliseconds) it waits up to overflowWait for one to come back, then
// maps one more (a stuck disk write never blocks a read). Buffers
// released while more than a sixteenth over the limit are mapped are
// unmapped (the sixteenth keeps a working set just over the limit from
// mapping and unmapping each block).
//
// Lock order: bufferPool.mu is a leaf; reclaim is called without it.
type bufferPool struct {
	size    int
	limit   int
	reclaim func() bool // drops one block; false when there is none to drop

	mu     sync.Mutex
	free   [][]byte
	mapped int
	maps   atomic.Int64  // mappings made (statistics for tests and metrics)
	avail  chan struct{} // a buffer went back to free (capacity 1)
}

// overflowWait bounds how long a get waits for a held buffer to come back
// before it maps one over the limit.
const overflowWait = 50 * time.Millisecond

func newBufferPool(size int, limit int, reclaim func() bool) *bufferPool {
	return &bufferPool{size: size, limit: max(limit, 1), reclaim: reclaim, avail: make(chan struct{}, 1)}
}

// get returns a buffer of n bytes with one reference.
func (p *bufferPool) get(n int) *buffer {
	if n < p.size/2 || n > p.size {
		b := &buffer{data: make([]byte, n)}
		b.refs.Store(1)
		return b
	}
	mem := p.take()
	b := &buffer{data: mem[:n], mem: mem, pool: p}
	b.refs.Store(1)
	return b
}

func (p *bufferPool) take() []byte {
	var deadline <-chan time.Time
	for {
		p.mu.Lock()
		if k := len(p.free); k > 0 {
			mem := p.free[k-1]
			p.free = p.free[:k-1]
			p.mu.Unlock()
			return mem
		}
		if p.mapped < p.limit || p.reclaim == nil {
			p.mapped++
			p.mu.Unlock()
			return p.mapNew()
		}
		p.mu.Unlock()
		if p.reclaim() {
			continue // a buffer went back: take it (or one freed meanwhile)
		}
		if deadline == nil {
			t := time.NewTimer(overflowWait)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-p.avail:
		case <-deadline:
			p.mu.Lock()
			p.mapped++
			p.mu.Unlock()
			return p.mapNew()
		}
	}
}

func (p *bufferPool) mapNew() []byte {
	p.maps.Add(1)
	mem, err := unix.Mmap(-1, 0, p.size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		// Out of address space or mappings: the Go heap is the fallback
		// (a large allocation is page-aligned there too).
		return make([]byte, p.size)
	}
	return mem
}

func (p *bufferPool) put(b *buffer) {
	mem := b.mem
	b.mem, b.data = nil, nil
	p.mu.Lock()
	if p.mapped <= p.limit+p.limit/16 {
		p.free = append(p.free, mem)
		p.mu.Unlock()
		select {
		case p.avail <- struct{}{}:
		default:
		}
		return
	}
	p.mapped--
	p.mu.Unlock()
	unmap(mem)
}

// close unmaps the free buffers; buffers still referenced are unmapped
// as they are released.
func (p *bufferPool) close() {
	p.mu.Lock()
	free := p.free
	p.free = nil
	p.mapped -= len(free)
	p.limit = 0
	p.mu.Unlock()
	for _, mem := range free {
		unmap(mem)
	}
}

func unmap(mem []byte) {
	if err := unix.Munmap(mem); err != nil {
		// A heap fallback buffer: the garbage collector frees it.
		return
	}
}
