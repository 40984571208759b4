package blockcache

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/testutil"
)

// gatedWrites replaces c's write-behind with a queue of queued blocks
// whose first free writes go through and whose later ones wait for the
// returned channel to close; with skip set they then write nothing (the
// process "died" first).
func gatedWrites(c *Cache, queued int, free int64, skip *atomic.Bool) chan struct{} {
	gate := make(chan struct{})
	var n atomic.Int64
	c.behind = newWriteBehind(func(b BlockRef, data []byte, crc uint32, direct bool) error {
		if n.Add(1) > free {
			<-gate
		}
		if skip.Load() {
			return nil
		}
		return c.disk.write(b, data, crc, direct)
	}, queued, false)
	c.behind.stuck, c.behind.pace = 200*time.Millisecond, 50*time.Millisecond
	return gate
}

// TestFullWriteQueueDropsCopiesNotReads: with the disk stuck, reads are
// served from memory at once and every byte is right; the copies that do
// not fit the queue are dropped, not waited for, and fetched again later.
func TestFullWriteQueueDropsCopiesNotReads(t *testing.T) {
	g := newMemGetter()
	const blocks = 20
	data := testutil.RandBytes(blocks*(64<<10), 11)
	obj := g.add("f", data)
	c := newTestCache(t, g, func(c *Config) { c.MemoryBytes = 2 << 20 })
	var skip atomic.Bool
	gate := gatedWrites(c, 2, 0, &skip)
	done := make(chan error, 1)
	go func() {
		got := make([]byte, len(data))
		_, err := c.ReadAt(context.Background(), obj, got, 0)
		if err == nil && !bytes.Equal(got, data) {
			err = errors.New("bytes differ from the source")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reads waited for a stuck disk")
	}
	// Two writers hold a block each and two more are queued.
	if d := c.behind.drops(); d < blocks-4 {
		t.Fatalf("%d copies dropped, want at least %d", d, blocks-4)
	}
	close(gate)
	if !c.behind.flush(obj, 5*time.Second) {
		t.Fatal("queued writes never finished")
	}
	if _, _, ok := c.OpenLocal(obj); ok {
		t.Fatal("an object with dropped blocks was opened as complete")
	}
	// The memory tier (2 MiB) still holds the file: reading it again
	// fetches nothing; the dropped copies are written when fetched anew.
	if n := fetchesToRead(t, g, c, obj, data); n != 0 {
		t.Errorf("%d fetches for a file held in memory", n)
	}
}

// TestCrashWithWritesQueued: a process that dies with disk writes queued
// leaves a disk tier whose every listed block has the right bytes (3 were
// written, and are served from disk after the restart); the blocks it
// never wrote are fetched again.
func TestCrashWithWritesQueued(t *testing.T) {
	g := newMemGetter()
	const blocks, written = 9, 3
	data := testutil.RandBytes((blocks-1)*(64<<10)+100, 12)
	obj := g.add("f", data)
	dir := t.TempDir()
	cfg := Config{BlockSize: 64 << 10, MemoryBytes: 1 << 20, DiskDir: dir, DiskBytes: 4 << 20, Getter: g}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var skip atomic.Bool
	gate := gatedWrites(c, 16, written, &skip)
	readAll(t, c, obj, data)
	deadline := time.Now().Add(5 * time.Second)
	for c.disk.size() < written*(64<<10) {
		if time.Now().After(deadline) {
			t.Fatalf("the first %d writes did not reach the disk", written)
		}
		time.Sleep(time.Millisecond)
	}
	// The crash: the queue is lost, the lock released, no clean record.
	skip.Store(true)
	close(gate)
	c.behind.close()
	c.stop()
	c.disk.lockFile.Close()
	os.Remove(filepath.Join(dir, cleanFile))

	c2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if n := fetchesToRead(t, g, c2, obj, data); n != blocks-written {
		t.Errorf("%d blocks fetched after the crash, want the %d never written", n, blocks-written)
	}
}

// crcGetter answers like memGetter and sends a CRC-32C with every block,
// as the cache workers do.
type crcGetter struct {
	*memGetter
	crc func(p []byte) uint32
}

func (g crcGetter) GetBlockChecksum(ctx context.Context, b BlockRef, p []byte) (uint32, bool, error) {
	if err := g.GetBlock(ctx, b, p); err != nil {
		return 0, false, err
	}
	return g.crc(p), true, nil
}

// TestOneChecksumPassPerBlock: a block whose checksum came checked from
// the tier below is stored with that checksum, not computed again (a
// deliberately different one shows which was kept).
func TestOneChecksumPassPerBlock(t *testing.T) {
	g := newMemGetter()
	data := testutil.RandBytes(2*(64<<10), 13)
	obj := g.add("f", data)
	c := newTestCache(t, crcGetter{g, func(p []byte) uint32 { return Checksum(p) ^ 1 }}, nil)
	_, crc, release, err := c.Block(context.Background(), c.block(obj, 0))
	if err != nil {
		t.Fatal(err)
	}
	release()
	if crc != Checksum(data[:64<<10])^1 {
		t.Fatalf("stored checksum %08x: computed again instead of taken from the tier below", crc)
	}
}

// TestSlowDiskPacesNotDrops: a disk slower than the reader but making
// progress holds fetches for room in the queue instead of dropping copies,
// so the file is whole on disk afterwards (what passthrough needs).
func TestSlowDiskPacesNotDrops(t *testing.T) {
	g := newMemGetter()
	const blocks = 12
	data := testutil.RandBytes(blocks*(64<<10), 14)
	obj := g.add("f", data)
	c := newTestCache(t, g, nil)
	c.behind = newWriteBehind(func(b BlockRef, p []byte, crc uint32, direct bool) error {
		time.Sleep(20 * time.Millisecond)
		return c.disk.write(b, p, crc, direct)
	}, 2, false)
	readAll(t, c, obj, data)
	if d := c.behind.drops(); d != 0 {
		t.Errorf("%d copies dropped by a slow but working disk", d)
	}
	f, release, ok := c.OpenLocal(obj)
	if !ok {
		t.Fatal("the file is not whole on disk after a read through a slow disk")
	}
	if f == nil {
		t.Fatal("OpenLocal returned no file")
	}
	release()
}

// TestDiskWriteModes: blocks written buffered or with O_DIRECT (an object
// whose last block is not 4 KiB-aligned) read back right after a restart,
// from the disk.
func TestDiskWriteModes(t *testing.T) {
	for _, direct := range []bool{false, true} {
		t.Run(map[bool]string{false: "buffered", true: "direct"}[direct], func(t *testing.T) {
			g := newMemGetter()
			data := testutil.RandBytes(5*(64<<10)+1234, 15)
			obj := g.add("f", data)
			// O_DIRECT needs a real file system; /var/tmp is one here.
			dir, err := os.MkdirTemp("/var/tmp", "sluice-direct-test-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			cfg := Config{BlockSize: 64 << 10, MemoryBytes: 1 << 20, DiskDir: dir, DiskBytes: 4 << 20, Getter: g,
				DirectWrites: direct}
			c, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, c, obj, data)
			c.Close()
			c2, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if n := fetchesToRead(t, g, c2, obj, data); n != 0 {
				t.Errorf("%d blocks fetched again after a restart; want all from the disk", n)
			}
		})
	}
}

// TestQueuedBlocksAreServed: a block evicted from memory before its disk
// write is served from the write-behind queue, not fetched again.
func TestQueuedBlocksAreServed(t *testing.T) {
	g := newMemGetter()
	data := testutil.RandBytes(6*(64<<10), 17)
	obj := g.add("f", data)
	c := newTestCache(t, g, func(c *Config) { c.MemoryBytes = 64 << 10 }) // one block
	var skip atomic.Bool
	gate := gatedWrites(c, 16, 0, &skip)
	defer close(gate)
	readAll(t, c, obj, data)
	if n := fetchesToRead(t, g, c, obj, data); n != 0 {
		t.Errorf("%d blocks fetched again while their disk copies were queued", n)
	}
}

// fetchesToRead reads obj whole through c, checks the bytes, and returns
// how many blocks that fetched from g.
func fetchesToRead(t *testing.T, g *memGetter, c *Cache, obj ObjectRef, data []byte) int64 {
	t.Helper()
	before := g.total.Load()
	readAll(t, c, obj, data)
	return g.total.Load() - before
}
