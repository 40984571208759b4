package fusefs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
)

func TestDirWalks(t *testing.T) {
	type open struct {
		i        int
		from, to int // 0, 0: no prefetch
		warm     bool
	}
	tests := []struct {
		name  string
		opens []open
	}{
		{"in order", []open{{0, 0, 0, false}, {1, 0, 0, false}, {2, 3, 18, false}, {3, 19, 19, false}, {4, 20, 20, false}}},
		{"parallel readers slightly out of order", []open{{0, 0, 0, false}, {2, 0, 0, false}, {1, 0, 0, false}, {3, 4, 19, false}, {5, 20, 21, false}, {4, 0, 0, false}}},
		{"random order", []open{{10, 0, 0, false}, {3, 0, 0, false}, {40, 0, 0, false}, {7, 0, 0, false}, {90, 0, 0, false}}},
		{"a jump ends the walk", []open{{0, 0, 0, false}, {1, 0, 0, false}, {2, 3, 18, false}, {50, 0, 0, false}, {51, 0, 0, false}, {52, 53, 68, false}}},
		{"warm opens go on with the walk, the next cold one catches up",
			[]open{{0, 0, 0, true}, {1, 0, 0, true}, {2, 0, 0, true}, {3, 0, 0, true}, {4, 5, 20, false}, {5, 0, 0, true}, {6, 21, 22, false}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w dirWalks
			for k, o := range tc.opens {
				from, to, ok := w.opened("d", o.i, o.warm)
				if want := o.from != 0 || o.to != 0; ok != want || (ok && (from != o.from || to != o.to)) {
					t.Fatalf("open %d (entry %d): prefetch %v [%d, %d], want %v [%d, %d]", k, o.i, ok, from, to, want, o.from, o.to)
				}
			}
		})
	}
}

// TestWalkPrefetchesNextFiles: a reader that goes through a directory of
// small files in order finds the next files fetched before it opens them;
// each block is fetched from the origin once. With NoOpen the kernel opens
// files without asking, and a node's first read counts as its open.
func TestWalkPrefetchesNextFiles(t *testing.T) {
	for _, noOpen := range []bool{false, true} {
		t.Run(map[bool]string{false: "opens", true: "no open requests"}[noOpen], func(t *testing.T) {
			files := map[string][]byte{}
			for i := 0; i < 40; i++ {
				files[fmt.Sprintf("shards/s%03d", i)] = testutil.RandBytes(20000+i, uint64(i))
			}
			tm := mountSource(t, fileBackend(t, files), mountConfig{blockSize: 64 << 10, noOpen: noOpen})
			read := func(i int) {
				t.Helper()
				p := fmt.Sprintf("shards/s%03d", i)
				got, err := os.ReadFile(filepath.Join(tm.dir, p))
				if err != nil || !bytes.Equal(got, files[p]) {
					t.Fatalf("%s: %v, equal %v", p, err, bytes.Equal(got, files[p]))
				}
			}
			for i := 0; i < 3; i++ {
				read(i)
			}
			// Opening s001 and s002 in order started the walk: s003..s018 come.
			for deadline := time.Now().Add(10 * time.Second); tm.getter.fetches.Load() < 19; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d blocks fetched after 3 files read in order; want the next 16 prefetched too", tm.getter.fetches.Load())
				}
			}
			for i := 3; i < 40; i++ {
				read(i)
			}
			if got, m := tm.getter.fetches.Load(), tm.getter.maxPerBlock(); got != 40 || m != 1 {
				t.Errorf("%d block fetches for 40 one-block files (max %d per block); want each once", got, m)
			}
		})
	}
}

// heldListing is a source whose listing of "shards" sends all its entries
// in one page and then does not end until release is closed: a large
// directory still being listed.
type heldListing struct {
	source.Source
	release chan struct{}
}

func (s *heldListing) List(ctx context.Context, dir string) ([]source.Entry, error) {
	var out []source.Entry
	err := s.ListPages(ctx, dir, func(p []source.Entry) error { out = append(out, p...); return nil })
	return out, err
}

func (s *heldListing) ListPages(ctx context.Context, dir string, page func([]source.Entry) error) error {
	entries, err := s.Source.List(ctx, dir)
	if err != nil {
		return err
	}
	if err := page(entries); err != nil || dir != "shards" {
		return err
	}
	select {
	case <-s.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestWalkWhileTheDirectoryIsListed: files opened in order while their
// directory's listing is still in progress (each lookup answered from the
// page that named it) start the walk once the listing is at hand.
func TestWalkWhileTheDirectoryIsListed(t *testing.T) {
	files := map[string][]byte{}
	for i := 0; i < 40; i++ {
		files[fmt.Sprintf("shards/s%03d", i)] = testutil.RandBytes(20000+i, uint64(i))
	}
	src := &heldListing{Source: fileBackend(t, files), release: make(chan struct{})}
	tm := mountSource(t, src, mountConfig{blockSize: 64 << 10})
	for i := 0; i < 3; i++ {
		p := fmt.Sprintf("shards/s%03d", i)
		if got, err := os.ReadFile(filepath.Join(tm.dir, p)); err != nil || !bytes.Equal(got, files[p]) {
			t.Fatalf("%s while the listing is in progress: %v, equal %v", p, err, bytes.Equal(got, files[p]))
		}
	}
	close(src.release)
	for deadline := time.Now().Add(10 * time.Second); tm.getter.fetches.Load() < 19; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d blocks fetched after 3 files read in order during the listing; want the next 16 prefetched once it ended", tm.getter.fetches.Load())
		}
	}
}
