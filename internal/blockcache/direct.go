package blockcache

import (
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

// openDirect opens path for O_DIRECT writes; nil where unsupported.
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
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
