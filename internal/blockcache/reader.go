package blockcache

import (
	"context"
	"sync"
)

// Reader reads one object for one open file handle and detects sequential
// access: a read that starts in the block of the previous read or next to it
// continues a sequential run, which keeps Readahead blocks ahead of the
// reader fetching in parallel. Any other read resets the run, so random
// readers pay for no readahead.
type Reader struct {
	c   *Cache
	obj ObjectRef

	mu        sync.Mutex
	lastBlock int64 // block of the last byte of the previous read
	aheadTo   int64 // last block already handed to Prefetch
	crossed   bool  // the readahead window reached the next object (its lookup started)
	nextObj   *ObjectRef
	nextTo    int64 // last block of nextObj handed to Prefetch (-1: none)

	// next, when set, names the object read after this one (the next file
	// of its directory): a sequential run whose readahead window passes
	// the end goes on into it, so that the origin is not idle while the
	// reader finishes this object.
	next func() (ObjectRef, bool)
}

// SetNext sets the object a sequential run continues into (see next).
func (r *Reader) SetNext(next func() (ObjectRef, bool)) {
	r.mu.Lock()
	r.next = next
	r.mu.Unlock()
}

// NewReader returns a Reader for obj.
func (c *Cache) NewReader(obj ObjectRef) *Reader {
	return &Reader{c: c, obj: obj, lastBlock: -1, aheadTo: -1, nextTo: -1}
}

// Object is the object this Reader reads.
func (r *Reader) Object() ObjectRef { return r.obj }

// ReadAt reads like Cache.ReadAt and schedules readahead for sequential runs.
func (r *Reader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	l, err := r.Read(ctx, p, off)
	if l == nil {
		return 0, err
	}
	n := l.CopyTo(p)
	l.Release()
	return n, err
}

// Read reads like Cache.Read and schedules readahead for sequential runs.
// A read whose block was handed to readahead before does not ask the tier
// below for its range on its own (fetchPart): the reader keeps up with
// the readahead's whole blocks, and only the first read of a run waits on
// a block no one has asked for yet. That read's readahead is asked for
// once it is answered: the blocks ahead would otherwise share the tier
// below (and the CPU) with the bytes the reader waits for.
func (r *Reader) Read(ctx context.Context, p []byte, off int64) (*Lease, error) {
	scheduled, plan := r.ahead(len(p), off)
	if scheduled {
		r.start(plan)
		return r.c.read(ctx, r.obj, p, off, false)
	}
	l, err := r.c.read(ctx, r.obj, p, off, true)
	r.start(plan)
	return l, err
}

// readahead is what one read hands to readahead (start): blocks [from,
// to] of the object, blocks [nfrom, nto] of the next one (nobj), and the
// lookup of the next object when the window first reaches past the end.
type readahead struct {
	from, to   int64
	nobj       *ObjectRef
	nfrom, nto int64
	lookup     func() (ObjectRef, bool)
}

// ahead plans readahead when a read of n bytes at off continues a
// sequential run, and reports whether the read's first block had been
// handed to readahead already.
func (r *Reader) ahead(n int, off int64) (scheduled bool, plan readahead) {
	plan.to = -1
	if ra := int64(r.c.cfg.Readahead); ra > 0 && n > 0 && off < r.obj.Size {
		bs := r.c.cfg.BlockSize
		first := off / bs
		last := (min(off+int64(n), r.obj.Size) - 1) / bs
		end := nblocks(r.obj.Size, bs) - 1
		r.mu.Lock()
		// Kernel readahead may deliver a request slightly out of order:
		// tolerate one block backwards.
		if first >= r.lastBlock-1 && first <= r.lastBlock+1 {
			scheduled = first <= r.aheadTo
			if want := last + ra; want > r.aheadTo {
				plan.from, plan.to = max(r.aheadTo+1, last+1), want
				r.aheadTo = want
				if upto := want - end - 1; upto > r.nextTo && r.next != nil {
					switch {
					case !r.crossed:
						r.crossed, plan.lookup = true, r.next
					case r.nextObj != nil:
						plan.nobj, plan.nfrom, plan.nto = r.nextObj, r.nextTo+1, upto
					}
					r.nextTo = upto
				}
			}
			r.lastBlock = max(r.lastBlock, last)
		} else {
			r.aheadTo, r.lastBlock = last, last
		}
		r.mu.Unlock()
	}
	return scheduled, plan
}

// start hands plan's blocks to the cache's readahead.
func (r *Reader) start(plan readahead) {
	if plan.to >= plan.from {
		r.c.Prefetch(r.obj, plan.from, plan.to)
	}
	if plan.nobj != nil {
		r.c.Prefetch(*plan.nobj, plan.nfrom, plan.nto)
	}
	if plan.lookup != nil { // off the read path: the lookup may list a directory
		go r.crossInto(plan.lookup)
	}
}

// crossInto looks up the next object and fetches ahead the blocks of it
// that the readahead window has reached by then.
func (r *Reader) crossInto(lookup func() (ObjectRef, bool)) {
	obj, ok := lookup()
	if !ok {
		return
	}
	r.mu.Lock()
	r.nextObj = &obj
	to := r.nextTo
	r.mu.Unlock()
	r.c.Prefetch(obj, 0, to)
}
