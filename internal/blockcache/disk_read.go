package blockcache

import (
	"errors"
	"io"
	"os"
)

// diskRead is what read found.
type diskRead struct {
	// hit: p holds the bytes. False when the block is absent or corrupt.
	hit bool
	// corrupt: the block failed its checksum and was dropped.
	corrupt bool
	// full is the whole block, with a reference the caller releases, when
	// it was read into a buffer of get's and verified just now (so the
	// caller can keep it in memory); nil otherwise. crc is its checksum.
	full *buffer
	crc  uint32
}

// read copies block bytes [inOff, inOff+len(p)) into p. A verified block is
// read straight into p; an unverified one is read whole and checked: into p
// when p is the whole block, else into a buffer from get returned as full
// (p is filled too).
func (d *diskTier) read(b BlockRef, p []byte, inOff int64, get func(int) *buffer) (diskRead, error) {
	d.mu.Lock()
	o := d.objects[b.Object.id()]
	var blk *diskBlock
	if o != nil {
		if el := o.blocks[b.Index]; el != nil && !el.Value.(*diskBlock).pending {
			blk = el.Value.(*diskBlock)
			d.lru.MoveToFront(el)
			if d.pinLocked(o) != nil {
				blk = nil
			}
		}
	}
	d.mu.Unlock()
	if blk == nil {
		return diskRead{}, nil
	}
	defer d.unpin(o)
	if blk.isVerified(d) {
		if _, err := o.data.ReadAt(p, o.base+b.Offset()+inOff); err != nil {
			return diskRead{}, err
		}
		return diskRead{hit: true, crc: blk.crc}, nil
	}
	whole := inOff == 0 && len(p) == int(blk.length)
	var buf *buffer
	data := p
	if !whole {
		buf = get(int(blk.length))
		data = buf.data
	}
	if _, err := o.data.ReadAt(data, o.base+b.Offset()); err != nil && !errors.Is(err, io.EOF) {
		buf.releaseIfAny()
		return diskRead{}, err
	}
	if Checksum(data) != blk.crc {
		buf.releaseIfAny()
		d.drop(o, b.Index)
		return diskRead{corrupt: true}, nil
	}
	d.mu.Lock()
	blk.verified = true
	d.mu.Unlock()
	if whole {
		return diskRead{hit: true, crc: blk.crc}, nil
	}
	copy(p, data[inOff:])
	return diskRead{hit: true, full: buf, crc: blk.crc}, nil
}

func (blk *diskBlock) isVerified(d *diskTier) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return blk.verified
}

// readWhole reads block b whole into buf (pooled: page-aligned), checking
// its checksum unless this process verified or wrote it. Where the block's
// bytes are not in the page cache it reads them with O_DIRECT: a buffered
// read would allocate page-cache pages for them, the dearest part of a
// read from the disk here, and the block is kept in memory anyway. It
// returns the stored CRC-32C.
func (d *diskTier) readWhole(b BlockRef, buf []byte) (diskRead, error) {
	d.mu.Lock()
	o := d.objects[b.Object.id()]
	var blk *diskBlock
	if o != nil {
		if el := o.blocks[b.Index]; el != nil && !el.Value.(*diskBlock).pending && int(el.Value.(*diskBlock).length) == len(buf) {
			blk = el.Value.(*diskBlock)
			d.lru.MoveToFront(el)
			if d.pinLocked(o) != nil {
				blk = nil
			}
		}
	}
	var direct *os.File
	if blk != nil && o.seg == nil {
		if share, _ := PageCached(o.data, b.Offset(), int64(len(buf))); share < 1 {
			direct = d.directLocked(o)
		}
	}
	verified := blk != nil && blk.verified
	d.mu.Unlock()
	if blk == nil {
		return diskRead{}, nil
	}
	defer d.unpin(o)
	if err := readBlockData(o.data, direct, buf, o.base+b.Offset()); err != nil {
		return diskRead{}, err
	}
	if !verified {
		if Checksum(buf) != blk.crc {
			d.drop(o, b.Index)
			return diskRead{corrupt: true}, nil
		}
		d.mu.Lock()
		blk.verified = true
		d.mu.Unlock()
	}
	return diskRead{hit: true, crc: blk.crc}, nil
}
