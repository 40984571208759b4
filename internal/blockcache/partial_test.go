package blockcache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
)

// streamGetter streams blocks the way a source reads a response body
// (source.ReadFull): its first fetch sends the first half of the block and
// then waits for rest, after which it sends the other half or fails with
// failWith; later fetches send whole blocks at once.
type streamGetter struct {
	*memGetter
	rest     chan struct{}
	failWith error
	calls    atomic.Int32
}

type gatedReader struct {
	r    io.Reader
	gate <-chan struct{}
	fail error
}

func (g *gatedReader) Read(p []byte) (int, error) {
	<-g.gate
	if g.fail != nil {
		return 0, g.fail
	}
	return g.r.Read(p)
}

func (g *streamGetter) GetBlock(ctx context.Context, b BlockRef, p []byte) error {
	whole := make([]byte, len(p))
	if err := g.memGetter.GetBlock(ctx, b, whole); err != nil {
		return err
	}
	var r io.Reader = bytes.NewReader(whole)
	if g.calls.Add(1) == 1 {
		half := len(whole) / 2
		r = io.MultiReader(bytes.NewReader(whole[:half]),
			&gatedReader{r: bytes.NewReader(whole[half:]), gate: g.rest, fail: g.failWith})
	}
	_, err := source.ReadFull(ctx, r, p)
	return err
}

// TestReadersOfPartOfABlockGetItAsItArrives: a reader of the first bytes
// of a block gets them while the rest of the block is on its way; a reader
// of the whole block gets it once it has arrived. When the fetch fails
// after the first half, the bytes the first reader holds stay intact while
// the cache's buffers are reused, and the block is fetched again whole.
func TestReadersOfPartOfABlockGetItAsItArrives(t *testing.T) {
	const bs = 64 << 10
	for _, tc := range []struct {
		name string
		fail error
	}{{"the rest arrives", nil}, {"the fetch fails after half the block", errors.New("connection reset")}} {
		t.Run(tc.name, func(t *testing.T) {
			mg := newMemGetter()
			want := testutil.RandBytes(20*bs, 7)
			obj := mg.add("f", want)
			g := &streamGetter{memGetter: mg, rest: make(chan struct{}), failWith: tc.fail}
			c := newTestCache(t, g, func(c *Config) { c.DiskDir = ""; c.MemoryBytes = 8 * bs })
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			first := make([]byte, 4096)
			l, err := c.Read(ctx, obj, first, 100)
			if err != nil {
				t.Fatalf("first bytes while the rest of the block is held back: %v", err)
			}
			defer l.Release()
			close(g.rest)
			whole := make([]byte, bs)
			_, err = c.ReadAt(ctx, obj, whole, 0)
			if tc.fail == nil && err != nil {
				t.Fatalf("whole block: %v", err)
			}
			if err != nil { // this read joined the failed fetch: the next one fetches again
				if _, err = c.ReadAt(ctx, obj, whole, 0); err != nil {
					t.Fatalf("whole block after a failed fetch: %v", err)
				}
			}
			if !bytes.Equal(whole, want[:bs]) {
				t.Fatal("whole block differs from the source")
			}
			// Cycle every buffer of the memory tier through other blocks.
			rest := make([]byte, 19*bs)
			if _, err := c.ReadAt(ctx, obj, rest, bs); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rest, want[bs:]) {
				t.Fatal("later blocks differ from the source")
			}
			got := make([]byte, 4096)
			if n := l.CopyTo(got); n != 4096 || !bytes.Equal(got, want[100:4196]) {
				t.Fatalf("the first reader's %d bytes changed under its lease", n)
			}
		})
	}
}

// rangeGetter is a tier below that answers ranges (like the cache
// workers): whole blocks wait for gate, ranges are answered at once and
// counted.
type rangeGetter struct {
	*memGetter
	gate   chan struct{}
	ranges atomic.Int32
}

func (g *rangeGetter) GetBlock(ctx context.Context, b BlockRef, p []byte) error {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.memGetter.GetBlock(ctx, b, p)
}

func (g *rangeGetter) ReadBlockRange(ctx context.Context, path, version string, p []byte, blockOff, inOff int64) error {
	g.ranges.Add(1)
	g.mu.Lock()
	defer g.mu.Unlock()
	copy(p, g.objects[path][blockOff+inOff:])
	return nil
}

// TestRangeReadsOnlyWhereNoOneAskedForTheBlock: over a tier below that
// answers ranges, a read that starts a block's fetch gets its range at
// once (while whole blocks are held back); a sequential reader asks for no
// range for blocks its readahead asked for, and a random read or a read
// outside a Reader does.
func TestRangeReadsOnlyWhereNoOneAskedForTheBlock(t *testing.T) {
	const bs = 64 << 10
	mg := newMemGetter()
	want := testutil.RandBytes(16*bs, 9)
	obj := mg.add("f", want)
	g := &rangeGetter{memGetter: mg, gate: make(chan struct{})}
	c := newTestCache(t, g, func(c *Config) { c.DiskDir = ""; c.Readahead = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := c.NewReader(obj)
	check := func(what string, p []byte, off int64, ranges int32) {
		t.Helper()
		if _, err := r.ReadAt(ctx, p, off); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !bytes.Equal(p, want[off:off+int64(len(p))]) {
			t.Fatalf("%s: bytes differ from the source", what)
		}
		if got := g.ranges.Load(); got != ranges {
			t.Fatalf("%s: %d range reads in all, want %d", what, got, ranges)
		}
	}
	check("first read, whole blocks held back", make([]byte, 4096), 0, 1)
	close(g.gate)
	for off := int64(4096); off < 6*bs; off += 16 << 10 {
		check("sequential read", make([]byte, 16<<10), off, 1)
	}
	check("random read", make([]byte, 4096), 12*bs+100, 2)
	if _, err := c.ReadAt(ctx, obj, make([]byte, 4096), 14*bs); err != nil {
		t.Fatal(err)
	}
	if got := g.ranges.Load(); got != 3 {
		t.Fatalf("a cold read outside a Reader: %d range reads in all, want 3", got)
	}
	// The Reader's own account, read by read: its first read and a random
	// read start a run, a read within the run is of a scheduled block.
	fresh := c.NewReader(obj)
	for _, step := range []struct {
		off       int64
		scheduled bool
	}{{0, false}, {bs - 100, true}, {2*bs + 5, true}, {12 * bs, false}, {13 * bs, false}, {13*bs + 4096, true}} {
		got, plan := fresh.ahead(4096, step.off)
		fresh.start(plan)
		if got != step.scheduled {
			t.Errorf("read at %d: scheduled for readahead %v, want %v", step.off, got, step.scheduled)
		}
	}
}
