package blockcache

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestDiskTierBoundsOpenFiles: with room for 8 descriptors, 40 one-block
// objects are written and read back right, reopened as needed, and the
// tier never holds more than 8 descriptors: 4 objects written (data and
// index), 8 read (data only); the descriptors of the process stay bounded.
func TestDiskTierBoundsOpenFiles(t *testing.T) {
	dir := t.TempDir()
	d, err := openDiskTier(dir, 64<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	d.maxFDs = 8
	fds := func() int {
		e, _ := os.ReadDir("/proc/self/fd")
		return len(e)
	}
	before := fds()
	data := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 40000+i) } // over half a block: not packed
	ref := func(i int) BlockRef {
		o := ObjectRef{Source: "test://", Path: fmt.Sprintf("f%03d", i), Version: "v", Size: int64(len(data(i)))}
		return BlockRef{Object: o, Index: 0, BlockSize: 64 << 10}
	}
	for i := range 40 {
		if err := d.write(ref(i), data(i), Checksum(data(i)), false); err != nil {
			t.Fatal(err)
		}
		if n := d.open.Len(); n > 4 || d.fds > 8 {
			t.Fatalf("after %d writes %d objects have %d descriptors open, want ≤ 4 objects, ≤ 8 descriptors", i+1, n, d.fds)
		}
	}
	for pass := range 2 {
		for i := range 40 {
			p := make([]byte, len(data(i)))
			r, err := d.read(ref(i), p, 0, newBufferPool(4096, 1, nil).get)
			if err != nil || !r.hit || !bytes.Equal(p, data(i)) {
				t.Fatalf("pass %d, object %d: hit %v err %v, equal %v", pass, i, r.hit, err, bytes.Equal(p, data(i)))
			}
		}
	}
	if n := d.open.Len(); n != 8 || d.fds != 8 {
		t.Errorf("%d objects have %d descriptors open after reads, want 8 objects with their data file only", n, d.fds)
	}
	if grew := fds() - before; grew > 8 {
		t.Errorf("the process holds %d more descriptors after 40 objects, want ≤ 8", grew)
	}
	// Every object is still in the tier, and its files on disk.
	if m, _ := filepath.Glob(filepath.Join(dir, "objects", "*", "*.data")); len(m) != 40 {
		t.Errorf("%d data files, want 40", len(m))
	}
}
