package fusefs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/testutil"
)

func TestPassthroughServesCachedFiles(t *testing.T) {
	files := map[string][]byte{"f": testutil.RandBytes(4*testBlock+3, 8)}
	for _, passthrough := range []bool{true, false} {
		name := map[bool]string{true: "passthrough", false: "no passthrough"}[passthrough]
		t.Run(name, func(t *testing.T) {
			m := mountSource(t, fileBackend(t, files), mountConfig{blockSize: testBlock, passthrough: passthrough})
			p := filepath.Join(m.dir, "f")
			for pass := 0; pass < 3; pass++ {
				// Drop the kernel's page cache of the file so reads reach FUSE.
				if f, err := os.Open(p); err == nil {
					fadviseDontNeed(f)
					f.Close()
				}
				got, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(got, files["f"]) {
					t.Fatalf("pass %d: err %v, equal %v", pass, err, bytes.Equal(got, files["f"]))
				}
				waitReleased(t, m, p)
			}
			if got := m.getter.fetches.Load(); got != 5 {
				t.Errorf("origin fetches %d, want 5 (once per block)", got)
			}
			// Pass 0 reads through FUSE; with passthrough, passes 1 and 2
			// open a fully cached file and never reach this process.
			served := testutil.CounterValue(t, m.metrics.BytesServed)
			if passthrough && served != float64(len(files["f"])) {
				t.Errorf("bytes served through FUSE %v, want %d (only the cold pass)", served, len(files["f"]))
			}
		})
	}
}

// waitReleased waits until the file system has seen the RELEASE of every
// open of p: the kernel sends it after close returns, and until it arrives
// an open is served in cached mode, as the kernel requires while a
// cached-mode file may still be open.
func waitReleased(t *testing.T, m *testMount, p string) {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	ino := st.Sys().(*syscall.Stat_t).Ino
	for deadline := time.Now().Add(10 * time.Second); m.fsys.front.cachedOpen(ino); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no RELEASE for a closed file within 10 s")
		}
	}
}

func TestStaleMountIsReplacedNotStacked(t *testing.T) {
	testutil.RequireRootFUSE(t)
	src := fileBackend(t, map[string][]byte{"f": []byte("hello")})
	dir := filepath.Join(t.TempDir(), "mnt")
	cache, err := blockcache.New(blockcache.Config{Getter: blockcache.OriginGetter{Source: src}})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	first, err := New(listcache.New(src, time.Minute), cache, Options{}).Mount(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mountutil.Unmount(dir) }) // in case the test fails half-way
	// Simulate a crashed server: abort its FUSE connection, which leaves the
	// mount point answering ENOTCONN.
	abortConnection(t, dir)
	first.Wait()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("after abort: statfs = %v, want ENOTCONN (mounts: %d)", err, countMounts(dir))
	}
	m := mountSource(t, src, mountConfig{dir: dir})
	if n := countMounts(dir); n != 1 {
		t.Fatalf("%d mounts stacked at %s, want 1", n, dir)
	}
	if got, err := os.ReadFile(filepath.Join(m.dir, "f")); err != nil || string(got) != "hello" {
		t.Fatalf("read after replacing the stale mount: %q, %v", got, err)
	}
	// A live mount is not replaced.
	if _, err := New(listcache.New(src, time.Minute), cache, Options{}).Mount(dir); err == nil {
		t.Fatal("mounting over a live mount succeeded, want an error")
	}
}

// TestPassthroughWhileOpenUncached: a file opened before it was cached
// stays open while the cache fills; the next open must not ask for
// passthrough (the kernel refuses it, EIO, while the inode has files open
// in cached mode), and passthrough engages once those are closed.
func TestPassthroughWhileOpenUncached(t *testing.T) {
	files := map[string][]byte{"f": testutil.RandBytes(4*testBlock+3, 9)}
	m := mountSource(t, fileBackend(t, files), mountConfig{blockSize: testBlock, passthrough: true})
	p := filepath.Join(m.dir, "f")
	held, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	// Closed before the mount's cleanup even when the test fails: this
	// process serves the mount, and its last close is a FLUSH to itself.
	defer held.Close()
	got := make([]byte, len(files["f"]))
	if _, err := held.ReadAt(got, 0); err != nil || !bytes.Equal(got, files["f"]) {
		t.Fatalf("cold read: %v", err)
	}
	for i := 0; i < 2; i++ {
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, files["f"]) {
			t.Fatalf("open %d while a cached-mode open is held: %v", i+2, err)
		}
	}
	held.Close()
	// The kernel sends RELEASE after close(2) returns: wait until this
	// process has seen the cached-mode files go.
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	ino := st.Sys().(*syscall.Stat_t).Ino
	for deadline := time.Now().Add(2 * time.Second); m.fsys.front.cachedOpen(ino) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	served := testutil.CounterValue(t, m.metrics.BytesServed)
	if f, err := os.Open(p); err == nil {
		fadviseDontNeed(f)
		f.Close()
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, files["f"]) {
		t.Fatalf("open after the held file closed: %v", err)
	}
	if after := testutil.CounterValue(t, m.metrics.BytesServed); after != served {
		t.Errorf("FUSE served %v more bytes after the cached-mode file closed; want passthrough", after-served)
	}
}
