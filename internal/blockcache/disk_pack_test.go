package blockcache

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func packRef(i int) (BlockRef, []byte) {
	data := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 500+i)
	o := ObjectRef{Source: "test://", Path: fmt.Sprintf("img/%04d.jpg", i), Version: "v1", Size: int64(len(data))}
	return BlockRef{Object: o, Index: 0, BlockSize: 64 << 10}, data
}

// readPacked reads object i back from d: ok false when the tier does not
// hold it; a wrong byte fails the test.
func readPacked(t *testing.T, d *diskTier, i int) bool {
	t.Helper()
	b, want := packRef(i)
	p := make([]byte, len(want))
	r, err := d.read(b, p, 0, newBufferPool(4096, 1, nil).get)
	if err != nil {
		t.Fatalf("object %d: %v", i, err)
	}
	if r.hit && !bytes.Equal(p, want) {
		t.Fatalf("object %d: wrong bytes", i)
	}
	return r.hit
}

func files(t *testing.T, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPackedObjects: small objects go into pack segments, not files of
// their own; they read back right, before and after a restart; evicted ones
// stay gone after it, and a segment whose every record was evicted is
// removed.
func TestPackedObjects(t *testing.T) {
	dir := t.TempDir()
	const n = 200
	// Room for about 100 of the 200 objects (each ~1-1.4 KB).
	d, err := openDiskTier(dir, 120<<10, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	d.packs.segSize = 16 << 10 // some 12 records a segment
	for i := range n {
		b, data := packRef(i)
		if err := d.write(b, data, Checksum(data), true); err != nil {
			t.Fatal(err)
		}
	}
	if m := files(t, filepath.Join(dir, "objects", "*", "*")); len(m) != 0 {
		t.Errorf("small objects made %d files of their own: %v", len(m), m[:min(3, len(m))])
	}
	held := map[int]bool{}
	for i := range n {
		held[i] = readPacked(t, d, i)
	}
	if !held[n-1] || held[0] {
		t.Fatalf("the newest object held %v, the oldest %v; want the least recently used evicted", held[n-1], held[0])
	}
	if d.size() > 120<<10 {
		t.Errorf("tier holds %d bytes, over its 120 KiB", d.size())
	}
	// Most early segments lost every record: their files are gone.
	segs := len(files(t, filepath.Join(dir, "packs", "*.pack")))
	if written := n * 1400 / (16 << 10); segs >= written {
		t.Errorf("%d segment files after eviction, want fewer than the %d written", segs, written)
	}
	d.close()

	d, err = openDiskTier(dir, 120<<10, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	for i := range n {
		if got := readPacked(t, d, i); got != held[i] {
			t.Errorf("object %d held %v after a restart, %v before", i, got, held[i])
		}
	}
	// New records go to a new segment, not after a possibly torn tail.
	b, data := packRef(n)
	if err := d.write(b, data, Checksum(data), false); err != nil || !readPacked(t, d, n) {
		t.Fatalf("a write after the restart: %v", err)
	}
}

// TestPackTornAndCorrupt: a segment cut in the middle of a record loads
// the records before the cut; a record whose bytes were damaged is caught
// by its checksum on the first read and dropped.
func TestPackTornAndCorrupt(t *testing.T) {
	dir := t.TempDir()
	d, err := openDiskTier(dir, 64<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		b, data := packRef(i)
		if err := d.write(b, data, Checksum(data), false); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	seg := d.packs.cur
	o3 := d.objects[mustRef(3).id()]
	o9 := d.objects[mustRef(9).id()]
	d.mu.Unlock()
	d.close()
	// Damage object 3's bytes; cut the segment inside object 9's record.
	f, err := os.OpenFile(seg.f.Name(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("XX"), o3.base+10); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(o9.base + 5); err != nil {
		t.Fatal(err)
	}
	f.Close()

	d, err = openDiskTier(dir, 64<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	for i := range 10 {
		b, want := packRef(i)
		p := make([]byte, len(want))
		r, err := d.read(b, p, 0, newBufferPool(4096, 1, nil).get)
		switch {
		case err != nil:
			t.Fatalf("object %d: %v", i, err)
		case i == 3 && (r.hit || !r.corrupt):
			t.Errorf("damaged object 3: hit %v corrupt %v, want caught by its checksum", r.hit, r.corrupt)
		case i == 9 && r.hit:
			t.Error("object 9, cut short, loaded")
		case i != 3 && i != 9 && (!r.hit || !bytes.Equal(p, want)):
			t.Errorf("object %d: hit %v, equal %v", i, r.hit, bytes.Equal(p, want))
		}
	}
	if d.has(mustBlock(3)) {
		t.Error("the damaged object is still in the tier after its checksum failed")
	}
}

func mustBlock(i int) BlockRef { b, _ := packRef(i); return b }
func mustRef(i int) ObjectRef  { return mustBlock(i).Object }
