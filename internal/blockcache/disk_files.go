package blockcache

import (
	"os"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The disk tier keeps at most maxFDs descriptors of objects open (an
// object's data file, its index once a record is written, its O_DIRECT
// descriptor once a direct write or read needs it), least recently used
// objects first out: a training set of a million small files would
// otherwise end in EMFILE, which fails reads. An object is opened again
// when a reader, writer or eviction needs it; pinned objects are never
// closed. A reader needs only the data file, so a tier that is read holds
// one descriptor per object.

// maxOpenDescriptors is maxFDs for this process: half its file limit, at
// least 48.
func maxOpenDescriptors() int {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil || r.Cur == unix.RLIM_INFINITY {
		return 1 << 17
	}
	return max(48, int(min(r.Cur, 1<<24)/2))
}

// openLocked makes sure o's data file is open and marks o most recently
// used, closing the least recently used unpinned objects beyond maxOpen.
// The index is opened by indexLocked when a record is written: a reader
// needs only the data, and a warm open of a small file paid for both.
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
	o.data = data
	d.fds++
	d.trackLocked(o)
	return nil
}

// indexLocked is o's index file, opened for appending on first use; o's
// data file is open (openLocked).
func (d *diskTier) indexLocked(o *diskObject) (*os.File, error) {
	if o.idx == nil {
		idx, err := os.OpenFile(d.objectPath(o.id, ".idx"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return nil, err
		}
		o.idx = idx
		d.fds++
		d.trimLocked(o)
	}
	return o.idx, nil
}

// trackLocked records o, whose files are open, as most recently used.
func (d *diskTier) trackLocked(o *diskObject) {
	o.openEl = d.open.PushFront(o)
	d.trimLocked(o)
}

// trimLocked closes the files of the least recently used unpinned objects
// other than keep while more than maxFDs descriptors are open.
func (d *diskTier) trimLocked(keep *diskObject) {
	for el := d.open.Back(); el != nil && d.fds > d.maxFDs; {
		prev := el.Prev()
		if c := el.Value.(*diskObject); c.pins == 0 && c != keep {
			d.closeLocked(c)
		}
		el = prev
	}
}

// closeLocked closes o's files (it stays in the tier).
func (d *diskTier) closeLocked(o *diskObject) {
	d.fds -= o.closeFiles()
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
		if o.direct = openDirect(d.objectPath(o.id, ".data")); o.direct != nil {
			d.fds++
			d.trimLocked(o)
		}
	}
	return o.direct
}
