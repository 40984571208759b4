package fusefs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
)

// countingGetter counts the blocks fetched from the origin, per block.
type countingGetter struct {
	inner   blockcache.Getter
	mu      sync.Mutex
	perKey  map[string]int
	perPath map[string]int
	fetches atomic.Int64
}

// fetchedOf is the number of blocks of path fetched.
func (g *countingGetter) fetchedOf(path string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.perPath[path]
}

func (g *countingGetter) GetBlock(ctx context.Context, b blockcache.BlockRef, p []byte) error {
	err := g.inner.GetBlock(ctx, b, p)
	if err == nil {
		g.fetches.Add(1)
		g.mu.Lock()
		g.perKey[b.Key()]++
		if g.perPath == nil {
			g.perPath = map[string]int{}
		}
		g.perPath[b.Object.Path]++
		g.mu.Unlock()
	}
	return err
}

func (g *countingGetter) maxPerBlock() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := 0
	for _, n := range g.perKey {
		m = max(m, n)
	}
	return m
}

type mountConfig struct {
	blockSize   int64
	ttl         time.Duration
	passthrough bool
	cacheDir    string
	readahead   int // blocks; 0: 4
	noReadahead bool
	noOpen      bool
	dir         string
}

type testMount struct {
	dir     string
	fsys    *FS
	getter  *countingGetter
	cache   *blockcache.Cache
	mount   *Mount
	metrics *metrics.Cache
}

// mountSource mounts src in a temp dir with a small cache; everything is
// undone at cleanup (and the test checks the mount is gone).
func mountSource(t *testing.T, src source.Source, mc mountConfig) *testMount {
	t.Helper()
	testutil.RequireRootFUSE(t)
	if mc.blockSize == 0 {
		mc.blockSize = 256 << 10
	}
	if mc.ttl == 0 {
		mc.ttl = time.Minute
	}
	if mc.cacheDir == "" {
		mc.cacheDir = t.TempDir()
	}
	switch {
	case mc.noReadahead:
		mc.readahead = 0
	case mc.readahead == 0:
		mc.readahead = 4
	}
	mtr := metrics.NewCache(nil)
	g := &countingGetter{inner: blockcache.OriginGetter{Source: src}, perKey: map[string]int{}}
	cache, err := blockcache.New(blockcache.Config{BlockSize: mc.blockSize, MemoryBytes: 16 << 20,
		DiskDir: mc.cacheDir, DiskBytes: 256 << 20, Readahead: mc.readahead, Getter: g, Metrics: mtr})
	if err != nil {
		t.Fatal(err)
	}
	dir := mc.dir
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "mnt")
	}
	fsys := New(listcache.New(src, mc.ttl), cache, Options{Passthrough: mc.passthrough, NoOpen: mc.noOpen, FsName: "test", AllowOther: true})
	m, err := fsys.Mount(dir)
	if err != nil {
		cache.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		m.Wait()
		cache.Close()
		if isMounted(dir) {
			t.Errorf("%s is still mounted after Unmount", dir)
		}
	})
	return &testMount{dir: dir, fsys: fsys, getter: g, cache: cache, mount: m, metrics: mtr}
}

// isMounted reads /proc/self/mountinfo (not the FUSE mount itself).
func isMounted(dir string) bool {
	return countMounts(dir) > 0
}

func countMounts(dir string) int {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && fields[4] == dir {
			n++
		}
	}
	return n
}

// abortConnection aborts the FUSE connection of the mount at dir, as a
// crash of its server would leave it.
func abortConnection(t *testing.T, dir string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	const ctl = "/sys/fs/fuse/connections"
	if _, err := os.Stat(ctl + "/" + "."); err == nil && !isMounted(ctl) {
		if err := unix.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil {
			t.Fatalf("mounting fusectl: %v", err)
		}
		t.Cleanup(func() { _ = unix.Unmount(ctl, 0) })
	}
	p := fmt.Sprintf("%s/%d/abort", ctl, unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte("1"), 0o200); err != nil {
		t.Fatalf("aborting the FUSE connection: %v", err)
	}
}

// fadviseDontNeed drops the page cache of an open file.
func fadviseDontNeed(f *os.File) {
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}
