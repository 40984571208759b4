package blockcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/testutil"
)

// memGetter serves objects from memory and counts fetches per block. It is
// a fake of the tier below, for the cache's own logic; the real sources are
// exercised in the fusefs and app tests.
type memGetter struct {
	mu      sync.Mutex
	objects map[string][]byte
	fetches map[string]int
	total   atomic.Int64
	delay   time.Duration
	fail    error
}

func newMemGetter() *memGetter {
	return &memGetter{objects: map[string][]byte{}, fetches: map[string]int{}}
}

func (g *memGetter) add(path string, data []byte) ObjectRef {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.objects[path] = data
	return ObjectRef{Source: "mem://", Path: path, Version: fmt.Sprint(len(data)), Size: int64(len(data))}
}

func (g *memGetter) GetBlock(ctx context.Context, b BlockRef, p []byte) error {
	if g.delay > 0 {
		time.Sleep(g.delay)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail != nil {
		return g.fail
	}
	g.fetches[b.Key()]++
	g.total.Add(1)
	copy(p, g.objects[b.Object.Path][b.Offset():])
	return nil
}

func (g *memGetter) maxFetchesPerBlock() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := 0
	for _, n := range g.fetches {
		m = max(m, n)
	}
	return m
}

func newTestCache(t *testing.T, g Getter, mutate func(*Config)) *Cache {
	t.Helper()
	cfg := Config{BlockSize: 64 << 10, MemoryBytes: 1 << 20, DiskDir: t.TempDir(), DiskBytes: 4 << 20, Getter: g}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestReadAtMatchesSource(t *testing.T) {
	const bs = 64 << 10
	tests := []struct {
		name string
		size int
		off  int64
		n    int
	}{
		{"empty file", 0, 0, 10},
		{"one byte", 1, 0, 10},
		{"whole block", bs, 0, bs},
		{"straddles a block edge", 3 * bs, bs - 7, 20},
		{"three blocks plus one byte, to the end", 3*bs + 1, 0, 4 * bs},
		{"last byte only", 3*bs + 1, 3 * bs, 5},
		{"spans four blocks", 5 * bs, bs / 2, 3*bs + 9},
		{"past the end", 100, 200, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newMemGetter()
			data := testutil.RandBytes(tc.size, uint64(tc.size))
			obj := g.add("f", data)
			c := newTestCache(t, g, nil)
			for pass := 0; pass < 2; pass++ { // cold, then cached
				p := make([]byte, tc.n)
				n, err := c.ReadAt(context.Background(), obj, p, tc.off)
				var want []byte
				if tc.off < int64(len(data)) {
					want = data[tc.off:min(int(tc.off)+tc.n, len(data))]
				}
				if len(want) == 0 {
					if err != io.EOF || n != 0 {
						t.Fatalf("pass %d: got n=%d err=%v, want 0, io.EOF", pass, n, err)
					}
					continue
				}
				if err != nil || !bytes.Equal(p[:n], want) {
					t.Fatalf("pass %d: n=%d err=%v, bytes equal=%v", pass, n, err, bytes.Equal(p[:n], want))
				}
			}
		})
	}
}

func TestOneFetchPerBlockUnderConcurrency(t *testing.T) {
	g := newMemGetter()
	g.delay = 5 * time.Millisecond
	var objs []ObjectRef
	var datas [][]byte
	for i := 0; i < 4; i++ {
		d := testutil.RandBytes(8*(64<<10)+123, uint64(i))
		datas = append(datas, d)
		objs = append(objs, g.add(fmt.Sprintf("f%d", i), d))
	}
	c := newTestCache(t, g, func(c *Config) { c.MemoryBytes = 64 << 20; c.DiskBytes = 64 << 20; c.Readahead = 4 })
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for r := 0; r < 32; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			i := r % len(objs)
			got := make([]byte, len(datas[i]))
			rd := c.NewReader(objs[i])
			for off := 0; off < len(got); off += 100_000 {
				if _, err := rd.ReadAt(context.Background(), got[off:min(off+100_000, len(got))], int64(off)); err != nil {
					errs <- err
					return
				}
			}
			if !bytes.Equal(got, datas[i]) {
				errs <- fmt.Errorf("reader %d: bytes differ", r)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := g.maxFetchesPerBlock(); m != 1 {
		t.Errorf("a block was fetched %d times, want exactly once", m)
	}
	if got, want := g.total.Load(), int64(4*9); got != want {
		t.Errorf("fetched %d blocks, want %d", got, want)
	}
}

func TestBoundsHoldUnderLoad(t *testing.T) {
	g := newMemGetter()
	var objs []ObjectRef
	for i := 0; i < 20; i++ {
		objs = append(objs, g.add(fmt.Sprintf("f%d", i), testutil.RandBytes(10*(64<<10), uint64(i))))
	}
	const memLimit, diskLimit = 256 << 10, 1 << 20
	c := newTestCache(t, g, func(c *Config) { c.MemoryBytes = memLimit; c.DiskBytes = diskLimit })
	p := make([]byte, 64<<10)
	for round := 0; round < 3; round++ {
		for _, o := range objs {
			for off := int64(0); off < o.Size; off += 64 << 10 {
				if _, err := c.ReadAt(context.Background(), o, p, off); err != nil {
					t.Fatal(err)
				}
				mem, disk := c.Stats()
				if mem > memLimit || disk > diskLimit {
					t.Fatalf("memory %d (limit %d), disk %d (limit %d)", mem, memLimit, disk, diskLimit)
				}
			}
		}
	}
	if used := dirBytes(t, c.cfg.DiskDir); used > diskLimit+(64<<10) {
		t.Errorf("disk blocks allocated on the file system: %d bytes, limit %d", used, diskLimit)
	}
}

// dirBytes sums the allocated (not apparent) size of the data files.
func dirBytes(t *testing.T, dir string) int64 {
	var total int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && filepath.Ext(p) == ".data" {
			total += allocated(fi)
		}
		return nil
	})
	return total
}

// cachedOnDisk reads one object of size bytes through a cache with a disk
// tier and closes it: what a restarted cache finds.
type cachedOnDisk struct {
	g    *memGetter
	obj  ObjectRef
	data []byte
	cfg  Config
}

func newCachedOnDisk(t *testing.T, size int, seed uint64) cachedOnDisk {
	t.Helper()
	g := newMemGetter()
	d := cachedOnDisk{g: g, data: testutil.RandBytes(size, seed)}
	d.obj = g.add("f", d.data)
	d.cfg = Config{BlockSize: 64 << 10, MemoryBytes: 1 << 20, DiskDir: t.TempDir(), DiskBytes: 4 << 20, Getter: g}
	c, err := New(d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, c, d.obj, d.data)
	c.Close()
	return d
}

// restart opens a cache on the same disk tier, closed at cleanup.
func (d cachedOnDisk) restart(t *testing.T) *Cache {
	t.Helper()
	c, err := New(d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestRestartKeepsDiskTier(t *testing.T) {
	d := newCachedOnDisk(t, 5*(64<<10)+1, 7)
	before := d.g.total.Load()
	readAll(t, d.restart(t), d.obj, d.data)
	if after := d.g.total.Load(); after != before {
		t.Errorf("restart fetched %d blocks again, want 0", after-before)
	}
}

func TestCacheDirIsExclusive(t *testing.T) {
	dir := t.TempDir()
	c := newTestCache(t, newMemGetter(), func(c *Config) { c.DiskDir = dir })
	_ = c
	if _, err := New(Config{DiskDir: dir, Getter: newMemGetter()}); err == nil {
		t.Fatal("second cache on the same dir: want an error")
	}
}

func readAll(t *testing.T, c *Cache, obj ObjectRef, want []byte) {
	t.Helper()
	got := make([]byte, obj.Size)
	if n, err := c.ReadAt(context.Background(), obj, got, 0); err != nil || n != len(want) {
		t.Fatalf("ReadAt: n=%d err=%v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes differ from the source")
	}
}

func TestCorruptAndTornBlocksAreRefetched(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, data, idx string)
		refetch int64
	}{
		{"flipped byte in block 1", func(t *testing.T, data, idx string) {
			f, _ := os.OpenFile(data, os.O_RDWR, 0)
			defer f.Close()
			b := []byte{0}
			f.ReadAt(b, 64<<10+5)
			b[0] ^= 0xff
			f.WriteAt(b, 64<<10+5)
		}, 1},
		{"torn trailing index record", func(t *testing.T, data, idx string) {
			f, _ := os.OpenFile(idx, os.O_WRONLY|os.O_APPEND, 0)
			defer f.Close()
			f.Write([]byte{1, 2, 3, 4, 5})
		}, 0},
		{"truncated data file", func(t *testing.T, data, idx string) {
			os.Truncate(data, 2*(64<<10))
		}, 1},
		{"garbage index header", func(t *testing.T, data, idx string) {
			os.WriteFile(idx, []byte("nonsense\n"), 0o600)
		}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newCachedOnDisk(t, 3*(64<<10), 3)
			id := d.obj.id()
			base := filepath.Join(d.cfg.DiskDir, "objects", id[:2], id)
			// Let the clock move past the clean-shutdown stamps, as any
			// later change to the files would.
			time.Sleep(20 * time.Millisecond)
			tc.damage(t, base+".data", base+".idx")
			before := d.g.total.Load()
			readAll(t, d.restart(t), d.obj, d.data)
			if got := d.g.total.Load() - before; got != tc.refetch {
				t.Errorf("re-fetched %d blocks, want %d", got, tc.refetch)
			}
		})
	}
}

func TestNewVersionIsNotServedStale(t *testing.T) {
	g := newMemGetter()
	c := newTestCache(t, g, nil)
	v1 := g.add("f", bytes.Repeat([]byte("a"), 1000))
	readAll(t, c, v1, bytes.Repeat([]byte("a"), 1000))
	v2data := bytes.Repeat([]byte("b"), 1000)
	v2 := g.add("f", v2data)
	v2.Version = "2"
	readAll(t, c, v2, v2data)
}

func TestReadaheadOnlyForSequentialReaders(t *testing.T) {
	tests := []struct {
		name    string
		offsets []int64
		want    int64 // blocks fetched in total once readahead settles
	}{
		{"sequential from the start", []int64{0, 64 << 10}, 2 + 4},
		{"random far apart", []int64{5 * (64 << 10), 15 * (64 << 10), 2 * (64 << 10), 10 * (64 << 10)}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newMemGetter()
			obj := g.add("f", testutil.RandBytes(20*(64<<10), 1))
			c := newTestCache(t, g, func(c *Config) { c.Readahead = 4; c.MemoryBytes = 8 << 20; c.DiskBytes = 8 << 20 })
			r := c.NewReader(obj)
			p := make([]byte, 1000)
			for i, off := range tc.offsets {
				if i == 1 && len(tc.offsets) == 2 {
					time.Sleep(10 * time.Millisecond)
				}
				if _, err := r.ReadAt(context.Background(), p, off); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(2 * time.Second)
			for g.total.Load() < tc.want && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond)
			if got := g.total.Load(); got != tc.want {
				t.Errorf("fetched %d blocks, want %d", got, tc.want)
			}
		})
	}
}

func TestFetchErrorsAndCancellation(t *testing.T) {
	g := newMemGetter()
	obj := g.add("f", testutil.RandBytes(1000, 1))
	g.fail = errors.New("origin down")
	c := newTestCache(t, g, nil)
	if _, err := c.ReadAt(context.Background(), obj, make([]byte, 10), 0); err == nil || !errors.Is(err, g.fail) {
		t.Fatalf("got %v, want the getter's error", err)
	}
	g.fail = nil
	g.delay = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	var otherErr error
	go func() {
		defer wg.Done()
		time.Sleep(20 * time.Millisecond)
		_, otherErr = c.ReadAt(context.Background(), obj, make([]byte, 10), 0)
	}()
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := c.ReadAt(ctx, obj, make([]byte, 10), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled reader: got %v, want context.Canceled", err)
	}
	wg.Wait()
	if otherErr != nil {
		t.Errorf("a reader sharing the fetch failed because another gave up: %v", otherErr)
	}
}

func TestOpenLocalNeedsEveryBlock(t *testing.T) {
	g := newMemGetter()
	data := testutil.RandBytes(3*(64<<10)+5, 9)
	obj := g.add("f", data)
	c := newTestCache(t, g, nil)
	if _, _, ok := c.OpenLocal(obj); ok {
		t.Fatal("OpenLocal on an uncached object succeeded")
	}
	c.ReadAt(context.Background(), obj, make([]byte, 10), 0)
	if _, _, ok := c.OpenLocal(obj); ok {
		t.Fatal("OpenLocal on a partly cached object succeeded")
	}
	readAll(t, c, obj, data)
	f, release, ok := c.OpenLocal(obj)
	if !ok {
		t.Fatal("OpenLocal on a fully cached object failed")
	}
	defer release()
	got, err := io.ReadAll(io.NewSectionReader(f, 0, int64(len(data))))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("local file differs from the source (err %v)", err)
	}
}

func TestCleanShutdownSkipsReverification(t *testing.T) {
	tests := []struct {
		name         string
		crash        bool // the clean-shutdown record is lost, as after a crash
		wantVerified bool
	}{
		{"after a clean stop blocks are trusted", false, true},
		{"after a crash blocks are verified on first read", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newCachedOnDisk(t, 3*(64<<10), 5)
			if tc.crash {
				os.Remove(filepath.Join(d.cfg.DiskDir, cleanFile))
			}
			c2 := d.restart(t)
			for _, el := range c2.disk.objects[d.obj.id()].blocks {
				if v := el.Value.(*diskBlock).verified; v != tc.wantVerified {
					t.Fatalf("block verified = %v, want %v", v, tc.wantVerified)
				}
			}
			if _, err := os.Stat(filepath.Join(d.cfg.DiskDir, cleanFile)); !os.IsNotExist(err) {
				t.Errorf("the clean record outlives the start (%v): a crash now would be taken for a clean stop", err)
			}
			readAll(t, c2, d.obj, d.data)
		})
	}
}
