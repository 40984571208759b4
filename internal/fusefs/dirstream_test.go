package fusefs

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/sluice-dev/sluice/internal/source"
)

// bigDir is a source of one directory, "big", of n one-byte objects,
// listed in pages of 1,000; the pages after the first half wait for
// release to close.
type bigDir struct {
	n       int
	release chan struct{}
}

func (s *bigDir) ID() string { return "big://" }
func (s *bigDir) List(ctx context.Context, dir string) ([]source.Entry, error) {
	var out []source.Entry
	err := s.ListPages(ctx, dir, func(p []source.Entry) error { out = append(out, p...); return nil })
	return out, err
}
func (s *bigDir) ListPages(ctx context.Context, dir string, page func([]source.Entry) error) error {
	switch dir {
	case "":
		return page([]source.Entry{{Name: "big", IsDir: true}})
	case "big":
	default:
		return source.ErrNotFound
	}
	for i := 0; i < s.n; i += 1000 {
		if i == s.n/2 {
			select {
			case <-s.release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		p := make([]source.Entry, 0, 1000)
		for j := i; j < min(i+1000, s.n); j++ {
			p = append(p, source.Entry{Name: fmt.Sprintf("f%06d", j), Size: 1, Version: "v1"})
		}
		if err := page(p); err != nil {
			return err
		}
	}
	return nil
}
func (s *bigDir) Stat(ctx context.Context, p string) (source.Entry, error) {
	return source.Entry{}, source.ErrNotFound
}
func (s *bigDir) ReadAt(ctx context.Context, p, v string, b []byte, off int64) error {
	return source.ErrNotFound
}

func heapNow() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestLargeDirectoryStreamsToReaddir: a directory of 100,000 objects is
// read by readdir as its pages arrive (the first half before the origin
// lists the second), equals the source's listing, and costs the heap its
// listing once: further readers of the directory add no copy of it.
func TestLargeDirectoryStreamsToReaddir(t *testing.T) {
	const n = 100_000
	src := &bigDir{n: n, release: make(chan struct{})}
	base := heapNow()
	m := mountSource(t, src, mountConfig{})
	big := filepath.Join(m.dir, "big")

	first, err := os.Open(big)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	seen := map[string]bool{}
	for len(seen) < n/2 {
		names, err := first.Readdirnames(1000)
		if err != nil {
			t.Fatalf("readdir after %d names, with the second half not listed yet: %v", len(seen), err)
		}
		for _, nm := range names {
			if seen[nm] {
				t.Fatalf("%s listed twice", nm)
			}
			seen[nm] = true
		}
	}
	close(src.release)
	for {
		names, err := first.Readdirnames(1000)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, nm := range names {
			if seen[nm] {
				t.Fatalf("%s listed twice", nm)
			}
			seen[nm] = true
		}
	}
	for i := range n {
		if !seen[fmt.Sprintf("f%06d", i)] {
			t.Fatalf("f%06d missing from the listing (%d names)", i, len(seen))
		}
	}
	if len(seen) != n {
		t.Fatalf("%d names, want %d", len(seen), n)
	}
	seen = nil

	listed := heapNow() - base
	// The listing's entries (about 100 bytes each) and, for every entry,
	// the inode READDIRPLUS handed to the kernel (go-fuse's and this
	// package's, about 450 bytes), which stays until the kernel forgets it.
	if listed > 80<<20 {
		t.Errorf("the mount's heap grew by %d MiB for a listing of %d entries, want under 80 MiB (800 bytes an entry)", listed>>20, n)
	}
	before := heapNow()
	var readers []*os.File
	for range 8 {
		f, err := os.Open(big)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Readdirnames(n / 2); err != nil {
			t.Fatal(err)
		}
		readers = append(readers, f)
	}
	grew := heapNow() - before
	t.Logf("heap: %d KiB for the listing and its inodes, %d KiB more for 8 readers half way", listed>>10, grew>>10)
	if grew > 4<<20 {
		t.Errorf("8 more readers half way through the directory grew the heap by %d MiB, want no copy of the listing each", grew>>20)
	}
	runtime.KeepAlive(readers)
}
