package blockcache

import (
	"errors"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Disk copies are written with O_DIRECT where the file system allows it:
// a buffered write of a new block allocates page-cache pages, which on this
// kind of VM costs more than the rest of a cold read together (0.43–0.54
// GB/s against 3.2–3.9 GB/s for O_DIRECT, DEVELOPERS.md). O_DIRECT needs
// the buffer, offset and length aligned; block buffers are page-aligned
// (Go allocates large objects on page boundaries), offsets are multiples
// of the block size, and the unaligned tail of an object's last block goes
// through the buffered descriptor.
const directAlign = 4096

// openDirect opens path for O_DIRECT writes and reads; nil where
// unsupported.
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

// writeBlockData writes data at off, the aligned part through direct when
// it is set and the buffer allows.
func writeBlockData(buffered, direct *os.File, data []byte, off int64) error {
	n := len(data) &^ (directAlign - 1)
	if direct == nil || n == 0 || off%directAlign != 0 || uintptr(unsafe.Pointer(&data[0]))%directAlign != 0 {
		_, err := buffered.WriteAt(data, off)
		return err
	}
	if _, err := direct.WriteAt(data[:n], off); err != nil {
		return err
	}
	if n < len(data) {
		_, err := buffered.WriteAt(data[n:], off+int64(n))
		return err
	}
	return nil
}

// readBlockData reads len(data) bytes at off, the aligned part through
// direct when it is set and the buffer allows.
func readBlockData(buffered, direct *os.File, data []byte, off int64) error {
	n := len(data) &^ (directAlign - 1)
	if direct == nil || n == 0 || off%directAlign != 0 || uintptr(unsafe.Pointer(&data[0]))%directAlign != 0 {
		_, err := buffered.ReadAt(data, off)
		return eofIsShort(err)
	}
	if _, err := direct.ReadAt(data[:n], off); err != nil {
		return eofIsShort(err)
	}
	if n < len(data) {
		_, err := buffered.ReadAt(data[n:], off+int64(n))
		return eofIsShort(err)
	}
	return nil
}

func eofIsShort(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// PageCached returns the share of [off, off+n) of f that is in the page
// cache (cachestat(2), Linux 6.5); ok is false where the kernel cannot tell.
func PageCached(f *os.File, off, n int64) (share float64, ok bool) {
	var st unix.Cachestat_t
	rng := unix.CachestatRange{Off: uint64(off), Len: uint64(n)}
	if n <= 0 || unix.Cachestat(uint(f.Fd()), &rng, &st, 0) != nil {
		return 0, false
	}
	pages := (n + int64(os.Getpagesize()) - 1) / int64(os.Getpagesize())
	return float64(st.Cache) / float64(pages), true
}
