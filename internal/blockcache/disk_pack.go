package blockcache

import (
	"container/list"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Small objects (one block, smaller than half a block: images, clips,
// shards of a training set) are packed into shared segment files instead
// of a data and an index file each:
//
//	packs/<n>.pack    records, appended: a header, then the object's bytes
//
// A record's header holds a magic, a deleted flag, its own length, the
// length and CRC-32C of the bytes, a CRC of the rest of the header, the
// object's id and its idxHeader (JSON). It is written with the bytes in
// one pwritev. An evicted object's bytes are punched out of the segment
// and its header marked deleted; a segment with no live record left is
// removed. At start every segment is scanned, its records loaded
// unverified (the first read checks the CRC, as for any block the last
// process may not have written whole), and new records go to a new
// segment: a torn tail is never appended to.
//
// Creating two files per object cost an inode allocation each, most of a
// small object's cold read here (ext4 without a journal scans recently
// freed inodes on every allocation), and two inodes per image of a
// million-image dataset.

const (
	packMagic     = "SLPK"
	packHeaderLen = 56 // fixed part: magic, flags, 3 pad, hdrLen, dataLen, dataCRC, hdrCRC, id (32)
	packDeleted   = 1
)

// segment is one pack file.
type segment struct {
	n    int
	f    *os.File
	tail int64 // next record's offset (appending segment only)
	live int   // records not deleted
}

// packs are the tier's segments; guarded by diskTier.mu.
type packs struct {
	dir     string
	segSize int64
	segs    map[int]*segment
	cur     *segment // the segment new records go to (nil: none yet)
	next    int
}

// packable reports whether obj is packed: one block, smaller than half.
func (d *diskTier) packable(obj ObjectRef) bool {
	return obj.Size > 0 && obj.Size < d.blockSize/2
}

// segmentSize is the size of a pack segment for a tier of limit bytes: a
// 64th of it, within [64 MiB, 1 GiB], so the tier holds some 64 segments
// (open descriptors) when full.
func segmentSize(limit int64) int64 {
	return min(max(limit/64, 64<<20), 1<<30)
}

// packLocked makes packed object id of ref, its record of n bytes
// allocated at the tail of the current segment (a new one when full).
func (d *diskTier) packLocked(ref ObjectRef, id string, n int) (*diskObject, []byte, error) {
	hdr, err := packHeader(ref, id, d.blockSize)
	if err != nil {
		return nil, nil, err
	}
	size := int64(len(hdr) + n)
	p := &d.packs
	if p.cur == nil || p.cur.tail+size > p.segSize {
		seg, err := p.create()
		if err != nil {
			return nil, nil, err
		}
		p.cur = seg
	}
	seg := p.cur
	o := &diskObject{id: id, ref: ref, data: seg.f, seg: seg, base: seg.tail + int64(len(hdr)), hdrLen: int64(len(hdr)),
		blocks: map[int64]*list.Element{}, nblocks: 1}
	seg.tail += size
	seg.live++
	return o, hdr, nil
}

func (p *packs) create() (*segment, error) {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	p.next++
	f, err := os.OpenFile(filepath.Join(p.dir, strconv.Itoa(p.next)+".pack"), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	seg := &segment{n: p.next, f: f}
	p.segs[seg.n] = seg
	return seg, nil
}

// packHeader is a record's header for ref (hdrLen and hdrCRC filled; the
// data length and CRC are set by writePacked).
func packHeader(ref ObjectRef, id string, blockSize int64) ([]byte, error) {
	meta, err := json.Marshal(idxHeader{Source: ref.Source, Path: ref.Path, Version: ref.Version, Size: ref.Size, BlockSize: blockSize})
	if err != nil || len(id) != 32 {
		return nil, fmt.Errorf("pack header for %s: %v", ref.Path, err)
	}
	h := make([]byte, packHeaderLen+len(meta))
	copy(h, packMagic)
	binary.LittleEndian.PutUint32(h[8:], uint32(len(h)))
	copy(h[24:56], id)
	copy(h[56:], meta)
	return h, nil
}

// writePacked writes o's record: hdr with the data's length and CRC, then
// data, in one pwritev.
func writePacked(o *diskObject, hdr, data []byte, crc uint32) error {
	binary.LittleEndian.PutUint32(hdr[12:], uint32(len(data)))
	binary.LittleEndian.PutUint32(hdr[16:], crc)
	binary.LittleEndian.PutUint32(hdr[20:], headerCRC(hdr))
	off := o.base - int64(len(hdr))
	n, err := unix.Pwritev(int(o.data.Fd()), [][]byte{hdr, data}, off)
	if err == nil && n != len(hdr)+len(data) {
		err = io.ErrShortWrite
	}
	return err
}

// headerCRC is the CRC-32C of a header but its flags and its own field:
// the flags change in place when the record is deleted.
func headerCRC(h []byte) uint32 {
	c := Checksum(h[:4])
	c = crc32.Update(c, castagnoli, h[8:20])
	return crc32.Update(c, castagnoli, h[24:])
}

// unpackLocked deletes o's record: its bytes punched out, its header
// marked deleted, its segment removed once nothing in it lives.
func (d *diskTier) unpackLocked(o *diskObject, length int64) {
	seg := o.seg
	if err := unix.Fallocate(int(seg.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, o.base, length); err != nil {
		klog.V(2).InfoS("Punching a hole in a pack failed", "object", o.ref.Path, "err", err)
	}
	hdrOff := o.base - o.hdrLen
	if _, err := seg.f.WriteAt([]byte{packDeleted}, hdrOff+4); err != nil {
		klog.V(2).InfoS("Marking a packed object deleted failed", "object", o.ref.Path, "err", err)
	}
	seg.live--
	if seg.live == 0 && seg != d.packs.cur {
		seg.f.Close()
		os.Remove(seg.f.Name())
		delete(d.packs.segs, seg.n)
	}
}

// loadPacks scans every segment and loads its live records.
func (d *diskTier) loadPacks() error {
	p := &d.packs
	names, err := filepath.Glob(filepath.Join(p.dir, "*.pack"))
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		n, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(name), ".pack"))
		if err != nil {
			continue
		}
		p.next = max(p.next, n)
		f, err := os.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		seg := &segment{n: n, f: f}
		d.scanSegment(seg)
		if seg.live == 0 {
			f.Close()
			os.Remove(name)
			continue
		}
		p.segs[n] = seg
	}
	return nil
}

// scanSegment loads seg's live records, stopping at the first header that
// does not check (a torn tail). A header is read with one pread (a second
// only for one over scanRead bytes).
func (d *diskTier) scanSegment(seg *segment) {
	fi, err := seg.f.Stat()
	if err != nil {
		return
	}
	size := fi.Size()
	buf := make([]byte, scanRead)
	for off := int64(0); off+packHeaderLen <= size; {
		h := buf[:min(int64(len(buf)), size-off)]
		if _, err := seg.f.ReadAt(h, off); err != nil || string(h[:4]) != packMagic {
			return
		}
		hdrLen := int64(binary.LittleEndian.Uint32(h[8:]))
		dataLen := int64(binary.LittleEndian.Uint32(h[12:]))
		if hdrLen < packHeaderLen || hdrLen > 1<<20 || off+hdrLen+dataLen > size {
			return
		}
		if hdrLen > int64(len(h)) {
			h = make([]byte, hdrLen)
			if _, err := seg.f.ReadAt(h, off); err != nil {
				return
			}
		}
		h = h[:hdrLen]
		if headerCRC(h) != binary.LittleEndian.Uint32(h[20:]) {
			return
		}
		if h[4]&packDeleted == 0 {
			d.loadPacked(seg, h, off+hdrLen, dataLen)
		}
		off += hdrLen + dataLen
	}
}

// scanRead is what scanSegment reads of a record at once: its header's
// fixed part and a path's worth of metadata.
const scanRead = 1024

// loadPacked loads one live record whose bytes are at base.
func (d *diskTier) loadPacked(seg *segment, h []byte, base, dataLen int64) {
	var meta idxHeader
	if json.Unmarshal(h[packHeaderLen:], &meta) != nil {
		return
	}
	ref := ObjectRef{Source: meta.Source, Path: meta.Path, Version: meta.Version, Size: meta.Size}
	id := string(h[24:56])
	if meta.BlockSize != d.blockSize || ref.id() != id || dataLen != ref.Size || !d.packable(ref) || d.objects[id] != nil {
		return
	}
	o := &diskObject{id: id, ref: ref, data: seg.f, seg: seg, base: base, hdrLen: int64(len(h)),
		blocks: map[int64]*list.Element{}, nblocks: 1}
	blk := &diskBlock{obj: o, index: 0, length: uint32(dataLen), crc: binary.LittleEndian.Uint32(h[16:])}
	o.blocks[0] = d.lru.PushBack(blk)
	d.used += dataLen
	d.objects[id] = o
	seg.live++
}
