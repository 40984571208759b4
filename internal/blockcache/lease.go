package blockcache

import "unsafe"

// Lease holds the bytes of one read where they are: slices of cached
// blocks, each referenced until Release, and, for blocks read from the
// disk tier, slices of the caller's buffer. A FUSE reply writes the slices
// straight to the kernel (writev) and releases the lease after.
type Lease struct {
	slices [][]byte
	bufs   []*buffer
	n      int
	inline [2][]byte
	ibufs  [2]*buffer
}

func newLease() *Lease {
	l := &Lease{}
	l.slices, l.bufs = l.inline[:0], l.ibufs[:0]
	return l
}

func (l *Lease) add(b *buffer, s []byte) {
	l.slices = append(l.slices, s)
	if b != nil {
		l.bufs = append(l.bufs, b)
	}
	l.n += len(s)
}

// Len is the number of bytes read.
func (l *Lease) Len() int { return l.n }

// Slices are the bytes read, in order; valid until Release.
func (l *Lease) Slices() [][]byte { return l.slices }

// CopyTo copies the bytes into p (at least Len bytes long), skipping
// slices that already are p's own bytes in place.
func (l *Lease) CopyTo(p []byte) int {
	pos := 0
	for _, s := range l.slices {
		if len(s) > 0 && unsafe.SliceData(s) != unsafe.SliceData(p[pos:]) {
			copy(p[pos:], s)
		}
		pos += len(s)
	}
	return pos
}

// Release gives the blocks back; the slices must not be used after it.
func (l *Lease) Release() {
	for i, b := range l.bufs {
		b.release()
		l.bufs[i] = nil
	}
	l.bufs, l.slices, l.n = l.bufs[:0], l.slices[:0], 0
}
