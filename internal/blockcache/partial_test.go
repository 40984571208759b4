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
