package blockcache

import (
	"bytes"
	"container/list"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/atomicfile"
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

// openObjectFiles opens (or creates) the object's data and index files. When
// rewrite is set, the index is rewritten with just the live records. A new
// object's index is written in place, not replaced: there is nothing to
// keep, a torn header is dropped at load like any unusable index, and each
// file created costs an inode allocation, the largest part of a small
// object's cold read on a busy ext4.
func (d *diskTier) openObjectFiles(ref ObjectRef, id string, rewrite bool, live map[int64][2]uint32) (*diskObject, error) {
	data, err := os.OpenFile(d.objectPath(id, ".data"), os.O_CREATE|os.O_RDWR, 0o600)
	if errors.Is(err, os.ErrNotExist) { // its directory: made at open, removed since
		if err = os.MkdirAll(filepath.Dir(d.objectPath(id, "")), 0o700); err == nil {
			data, err = os.OpenFile(d.objectPath(id, ".data"), os.O_CREATE|os.O_RDWR, 0o600)
		}
	}
	if err != nil {
		return nil, err
	}
	if err := data.Truncate(ref.Size); err != nil {
		data.Close()
		return nil, err
	}
	idxPath := d.objectPath(id, ".idx")
	var idx *os.File
	switch {
	case live == nil:
		idx, err = os.OpenFile(idxPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o600)
		if err == nil {
			if _, err = idx.Write(indexBytes(ref, d.blockSize, nil)); err != nil {
				idx.Close()
			}
		}
	case rewrite:
		if err = atomicfile.Replace(idxPath, indexBytes(ref, d.blockSize, live), 0o600); err == nil {
			idx, err = os.OpenFile(idxPath, os.O_WRONLY|os.O_APPEND, 0o600)
		}
	default:
		idx, err = os.OpenFile(idxPath, os.O_WRONLY|os.O_APPEND, 0o600)
	}
	if err != nil {
		data.Close()
		return nil, err
	}
	o := &diskObject{id: id, ref: ref, data: data, idx: idx, blocks: map[int64]*list.Element{},
		nblocks: nblocks(ref.Size, d.blockSize)}
	d.fds += 2
	d.trackLocked(o)
	return o, nil
}

// indexBytes is an index file: a header and the live records.
func indexBytes(ref ObjectRef, blockSize int64, live map[int64][2]uint32) []byte {
	hdr, _ := json.Marshal(idxHeader{Source: ref.Source, Path: ref.Path, Version: ref.Version, Size: ref.Size, BlockSize: blockSize})
	var buf bytes.Buffer
	buf.Grow(len(idxMagic) + len(hdr) + 1 + len(live)*recordSize)
	buf.WriteString(idxMagic)
	buf.Write(hdr)
	buf.WriteByte('\n')
	for idx, lc := range live {
		buf.Write(record(idx, lc[0], lc[1]))
	}
	return buf.Bytes()
}

func record(idx int64, length, crc uint32) []byte {
	var r [recordSize]byte
	binary.LittleEndian.PutUint64(r[0:8], uint64(idx))
	binary.LittleEndian.PutUint32(r[8:12], length)
	binary.LittleEndian.PutUint32(r[12:16], crc)
	return r[:]
}
