package blockcache

import (
	"bytes"
	"container/list"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Disk layout, under Config.DiskDir:
//
//	lock                     flock: one process per cache dir
//	objects/ab/<id>.data     sparse file, the object's size; present blocks at their offsets
//	objects/ab/<id>.idx      header line, then 16-byte records (index, length, crc32c)
//	packs/<n>.pack           objects smaller than half a block, packed (disk_pack.go)
//
// A record is appended after its block's bytes were written; a tombstone
// record (length 0xffffffff) marks an evicted block. A crash can leave a
// record whose bytes never reached the disk or a torn trailing record: the
// first is caught by the checksum when the block is read (and re-fetched),
// the second is ignored when the index is loaded.

const (
	idxMagic     = "SLUICEIDX1 "
	recordSize   = 16
	tombstoneLen = 0xffffffff
)

type idxHeader struct {
	Source    string `json:"source"`
	Path      string `json:"path"`
	Version   string `json:"version"`
	Size      int64  `json:"size"`
	BlockSize int64  `json:"blockSize"`
}

type diskObject struct {
	id      string
	ref     ObjectRef
	data    *os.File
	direct  *os.File // O_DIRECT writes of data (nil: unsupported)
	idx     *os.File
	blocks  map[int64]*list.Element // values are *diskBlock
	pins    int                     // readers, writers and passthrough opens; pinned objects are not evicted
	nblocks int64
	openEl  *list.Element // in diskTier.open while its files are open (disk_files.go)
	// seg is the pack segment of a packed object (disk_pack.go), whose
	// bytes are at base in it (data is the segment's file) after a record
	// header of hdrLen bytes; nil for an object with files of its own.
	seg    *segment
	base   int64
	hdrLen int64
}

// closeFiles closes o's open files and returns how many it closed (a
// packed object's segment stays open: it is the tier's).
func (o *diskObject) closeFiles() int {
	if o.seg != nil {
		return 0
	}
	n := 0
	for _, f := range []*os.File{o.data, o.idx, o.direct} {
		if f != nil {
			f.Close()
			n++
		}
	}
	o.data, o.idx, o.direct = nil, nil, nil
	return n
}

type diskBlock struct {
	obj      *diskObject
	index    int64
	length   uint32
	crc      uint32
	verified bool // checksum checked (or written) by this process
	pending  bool // being written; invisible to readers
}

// diskTier is the local disk tier. Lock order: diskTier.mu is a leaf; it is
// never held while calling into the memory tier or a Getter. File I/O under
// mu is limited to opening/creating object files, hole punching and index
// appends; block reads and writes happen outside it, protected by pins.
type diskTier struct {
	dir       string
	limit     int64
	blockSize int64
	lockFile  *os.File

	mu      sync.Mutex
	used    int64
	objects map[string]*diskObject
	lru     *list.List // front = most recently used *diskBlock
	open    *list.List // objects whose files are open, front = most recently used
	fds     int        // descriptors of the objects in open
	maxFDs  int
	packs   packs
}

func openDiskTier(dir string, limit, blockSize int64) (*diskTier, error) {
	// Every object directory (objects/00 .. objects/ff) is made here, not
	// per object.
	for i := range 256 {
		if err := os.MkdirAll(filepath.Join(dir, "objects", fmt.Sprintf("%02x", i)), 0o700); err != nil {
			return nil, fmt.Errorf("cache dir: %w", err)
		}
	}
	lf, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("cache dir %s is in use by another process: %w", dir, err)
	}
	d := &diskTier{dir: dir, limit: limit, blockSize: blockSize, lockFile: lf,
		objects: map[string]*diskObject{}, lru: list.New(), open: list.New(), maxFDs: maxOpenDescriptors(),
		packs: packs{dir: filepath.Join(dir, "packs"), segSize: segmentSize(limit), segs: map[int]*segment{}}}
	if err := d.load(); err != nil {
		d.close()
		return nil, err
	}
	d.mu.Lock()
	d.evictLocked(0)
	d.mu.Unlock()
	return d, nil
}

func (d *diskTier) objectPath(id, ext string) string {
	return filepath.Join(d.dir, "objects", id[:2], id+ext)
}

// load reads every index file, dropping objects whose index is unusable.
func (d *diskTier) load() error {
	idxFiles, err := filepath.Glob(filepath.Join(d.dir, "objects", "*", "*.idx"))
	if err != nil {
		return err
	}
	clean := d.readCleanRecord()
	if err := d.loadPacks(); err != nil {
		return err
	}
	for _, p := range idxFiles {
		id := strings.TrimSuffix(filepath.Base(p), ".idx")
		if err := d.loadObject(id, d.unchangedSinceCleanStop(id, clean)); err != nil {
			klog.InfoS("Dropping unusable cache entry", "id", id, "reason", err.Error())
			os.Remove(d.objectPath(id, ".idx"))
			os.Remove(d.objectPath(id, ".data"))
		}
	}
	return nil
}

// loadObject loads one object's index; trusted marks its blocks verified
// (see disk_clean.go).
func (d *diskTier) loadObject(id string, trusted bool) error {
	raw, err := os.ReadFile(d.objectPath(id, ".idx"))
	if err != nil {
		return err
	}
	hdr, recs, ok := bytes.Cut(raw, []byte("\n"))
	if !ok || !bytes.HasPrefix(hdr, []byte(idxMagic)) {
		return errors.New("bad index header")
	}
	var h idxHeader
	if err := json.Unmarshal(hdr[len(idxMagic):], &h); err != nil {
		return fmt.Errorf("bad index header: %w", err)
	}
	ref := ObjectRef{Source: h.Source, Path: h.Path, Version: h.Version, Size: h.Size}
	if h.BlockSize != d.blockSize || ref.id() != id {
		return errors.New("block size or identity changed")
	}
	live := map[int64][2]uint32{}
	tombstones := 0
	for len(recs) >= recordSize {
		idx := int64(binary.LittleEndian.Uint64(recs[0:8]))
		length := binary.LittleEndian.Uint32(recs[8:12])
		crc := binary.LittleEndian.Uint32(recs[12:16])
		recs = recs[recordSize:]
		if length == tombstoneLen {
			delete(live, idx)
			tombstones++
			continue
		}
		b := BlockRef{Object: ref, Index: idx, BlockSize: d.blockSize}
		if idx < 0 || idx >= nblocks(ref.Size, d.blockSize) || int64(length) != b.Len() {
			continue
		}
		live[idx] = [2]uint32{length, crc}
	}
	if len(live) == 0 {
		return errors.New("no blocks")
	}
	o, err := d.openObjectFiles(ref, id, len(recs) > 0 || tombstones > 0, live)
	if err != nil {
		return err
	}
	for idx, lc := range live {
		blk := &diskBlock{obj: o, index: idx, length: lc[0], crc: lc[1], verified: trusted}
		o.blocks[idx] = d.lru.PushBack(blk)
		d.used += int64(lc[0])
	}
	d.objects[id] = o
	return nil
}

func nblocks(size, blockSize int64) int64 { return (size + blockSize - 1) / blockSize }

// has reports whether a block is present (not necessarily verified).
func (d *diskTier) has(b BlockRef) bool { return d.holds(b.Object.id(), b.Index) }

// holds is has for block index of the object whose id is id.
func (d *diskTier) holds(id string, index int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	o := d.objects[id]
	if o == nil {
		return false
	}
	el := o.blocks[index]
	return el != nil && !el.Value.(*diskBlock).pending
}

// drop removes one block (after a checksum failure).
func (d *diskTier) drop(o *diskObject, index int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if el := o.blocks[index]; el != nil {
		d.removeBlockLocked(el)
	}
}

func (d *diskTier) unpin(o *diskObject) {
	d.mu.Lock()
	defer d.mu.Unlock()
	o.pins--
	d.maybeCloseLocked(o)
}

// write stores a block whose CRC-32C is crc, with O_DIRECT when direct is
// set and the file system allows it (see direct.go). It is skipped (not an
// error) when the tier cannot make room because everything else is pinned.
func (d *diskTier) write(b BlockRef, data []byte, crc uint32, direct bool) error {
	id := b.Object.id()
	d.mu.Lock()
	o := d.objects[id]
	// A packed object whose record was deleted while it was pinned is
	// gone once unpinned; its block is not written again until then.
	if o != nil && (o.blocks[b.Index] != nil || o.seg != nil) {
		d.mu.Unlock()
		return nil
	}
	if !d.evictLocked(int64(len(data))) {
		d.mu.Unlock()
		return nil
	}
	var hdr []byte // a packed object's record header
	if o == nil {
		var err error
		if d.packable(b.Object) {
			o, hdr, err = d.packLocked(b.Object, id, len(data))
		} else {
			o, err = d.openObjectFiles(b.Object, id, false, nil)
		}
		if err != nil {
			d.mu.Unlock()
			return err
		}
		d.objects[id] = o
	}
	if err := d.pinLocked(o); err != nil {
		d.mu.Unlock()
		return err
	}
	var idx *os.File
	var err error
	if o.seg == nil {
		if idx, err = d.indexLocked(o); err != nil {
			o.pins--
			d.maybeCloseLocked(o)
			d.mu.Unlock()
			return err
		}
	}
	blk := &diskBlock{obj: o, index: b.Index, length: uint32(len(data)), crc: crc, pending: true}
	o.blocks[b.Index] = d.lru.PushFront(blk)
	d.used += int64(len(data))
	var df *os.File
	if direct && o.seg == nil {
		df = d.directLocked(o)
	}
	d.mu.Unlock()

	if o.seg != nil {
		err = writePacked(o, hdr, data, crc)
	} else if err = writeBlockData(o.data, df, data, b.Offset()); err == nil {
		_, err = idx.Write(record(b.Index, blk.length, blk.crc))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	o.pins--
	if err != nil {
		d.removeBlockLocked(o.blocks[b.Index])
		return err
	}
	blk.pending, blk.verified = false, true
	return nil
}

// evictLocked frees space for need more bytes, least recently used first,
// skipping pinned objects. It reports whether the space is available.
func (d *diskTier) evictLocked(need int64) bool {
	if need > d.limit {
		return false
	}
	for el := d.lru.Back(); el != nil && d.used+need > d.limit; {
		prev := el.Prev()
		blk := el.Value.(*diskBlock)
		if blk.obj.pins == 0 && !blk.pending {
			d.removeBlockLocked(el)
		}
		el = prev
	}
	return d.used+need <= d.limit
}

func (d *diskTier) removeBlockLocked(el *list.Element) {
	blk := el.Value.(*diskBlock)
	o := blk.obj
	d.lru.Remove(el)
	delete(o.blocks, blk.index)
	d.used -= int64(blk.length)
	if o.seg != nil {
		d.unpackLocked(o, int64(blk.length))
		d.maybeCloseLocked(o)
		return
	}
	off := blk.index * d.blockSize
	if err := d.openLocked(o); err != nil {
		klog.V(2).InfoS("Opening a disk cache object to evict a block failed", "object", o.ref.Path, "err", err)
		d.maybeCloseLocked(o)
		return
	}
	if err := unix.Fallocate(int(o.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, int64(blk.length)); err != nil {
		klog.V(2).InfoS("Punching a hole failed", "object", o.ref.Path, "err", err)
	}
	idx, err := d.indexLocked(o)
	if err == nil {
		_, err = idx.Write(record(blk.index, tombstoneLen, 0))
	}
	if err != nil {
		klog.V(2).InfoS("Writing a tombstone failed", "object", o.ref.Path, "err", err)
	}
	d.maybeCloseLocked(o)
}

// maybeCloseLocked deletes an object that has no blocks and no pins.
func (d *diskTier) maybeCloseLocked(o *diskObject) {
	if len(o.blocks) > 0 || o.pins > 0 || d.objects[o.id] != o {
		return
	}
	delete(d.objects, o.id)
	if o.seg != nil {
		return
	}
	d.closeLocked(o)
	os.Remove(d.objectPath(o.id, ".idx"))
	os.Remove(d.objectPath(o.id, ".data"))
}

// openComplete returns a read-only file of an object whose every block is
// present and verified, pinned until release is called. ok is false when the
// object is incomplete.
func (d *diskTier) openComplete(ref ObjectRef) (f *os.File, release func(), ok bool) {
	d.mu.Lock()
	o := d.objects[ref.id()]
	if o == nil || o.seg != nil || int64(len(o.blocks)) != o.nblocks {
		// A packed object has no file of its own to pass through.
		d.mu.Unlock()
		return nil, nil, false
	}
	var unverified []*diskBlock
	for _, el := range o.blocks {
		blk := el.Value.(*diskBlock)
		if blk.pending {
			d.mu.Unlock()
			return nil, nil, false
		}
		if !blk.verified {
			unverified = append(unverified, blk)
		}
	}
	if d.pinLocked(o) != nil {
		d.mu.Unlock()
		return nil, nil, false
	}
	d.mu.Unlock()
	// One buffer for every block checked, only as large as the largest: a
	// 4 MiB buffer per open cost a warm open of a small file 1.6 ms, most
	// of it zeroing memory the open did not use.
	var scratch []byte
	for _, blk := range unverified {
		if int(blk.length) > len(scratch) {
			scratch = make([]byte, blk.length)
		}
		buf := scratch[:blk.length]
		if _, err := o.data.ReadAt(buf, blk.index*d.blockSize); err != nil || Checksum(buf) != blk.crc {
			d.drop(o, blk.index)
			d.unpin(o)
			return nil, nil, false
		}
		d.mu.Lock()
		blk.verified = true
		d.mu.Unlock()
	}
	// The object's own descriptor: a pinned object's files stay open,
	// and a second open of the file per open of a small one was a third
	// of a warm open's cost.
	var once sync.Once
	return o.data, func() { once.Do(func() { d.unpin(o) }) }, true
}

func (d *diskTier) size() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.used
}

func (d *diskTier) close() {
	d.mu.Lock()
	d.writeCleanRecord()
	for _, o := range d.objects {
		o.closeFiles()
	}
	for _, seg := range d.packs.segs {
		seg.f.Close()
	}
	d.packs.segs, d.packs.cur = map[int]*segment{}, nil
	d.fds = 0
	d.objects = map[string]*diskObject{}
	d.lru.Init()
	d.mu.Unlock()
	d.lockFile.Close()
}
