package blockcache

import (
	"os"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The disk tier keeps the files of at most maxOpen objects open (data and
// index, and the O_DIRECT descriptor once a direct write needs it), least
// recently used first out: a training set of a million small files would
// otherwise hold three descriptors for each and end in EMFILE, which fails
// reads. An object is opened again when a reader, writer or eviction needs
// it; pinned objects are never closed.

// maxOpenObjects is maxOpen for this process: an eighth of its file limit
// (each object holds up to three descriptors), at least 16.
func maxOpenObjects() int {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil || r.Cur == unix.RLIM_INFINITY {
		return 1 << 16
	}
	return max(16, int(min(r.Cur, 1<<24)/8))
}

// openLocked makes sure o's data and index files are open and marks o most
// recently used, closing the least recently used unpinned objects beyond
// maxOpen.
func (d *diskTier) openLocked(o *diskObject) error {
	if o.data != nil {
		if o.openEl != nil {
			d.open.MoveToFront(o.openEl)
		}
		return nil
	}
	data, err := os.OpenFile(d.objectPath(o.id, ".data"), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	idx, err := os.OpenFile(d.objectPath(o.id, ".idx"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		data.Close()
		return err
	}
	o.data, o.idx = data, idx
	d.trackLocked(o)
	return nil
}

// trackLocked records o, whose files are open, as most recently used.
func (d *diskTier) trackLocked(o *diskObject) {
	o.openEl = d.open.PushFront(o)
	for el := d.open.Back(); el != nil && d.open.Len() > d.maxOpen; {
		prev := el.Prev()
		if c := el.Value.(*diskObject); c.pins == 0 && c != o {
			d.closeLocked(c)
		}
		el = prev
	}
}

// closeLocked closes o's files (it stays in the tier).
func (d *diskTier) closeLocked(o *diskObject) {
	o.closeFiles()
	if o.openEl != nil {
		d.open.Remove(o.openEl)
		o.openEl = nil
	}
}

// pinLocked pins o, with its files open.
func (d *diskTier) pinLocked(o *diskObject) error {
	if err := d.openLocked(o); err != nil {
		klog.V(2).InfoS("Opening a disk cache object failed", "object", o.ref.Path, "err", err)
		return err
	}
	o.pins++
	return nil
}

// directLocked is o's O_DIRECT descriptor, opened on first use (nil where
// unsupported).
func (d *diskTier) directLocked(o *diskObject) *os.File {
	if o.direct == nil {
		o.direct = openDirect(d.objectPath(o.id, ".data"))
	}
	return o.direct
}
