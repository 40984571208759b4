package blockcache

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
)

// firstReadGetter holds block 0 back for a while and notes whether a
// readahead fetch reached the tier below meanwhile.
type firstReadGetter struct {
	*memGetter
	hold          time.Duration
	held          atomic.Bool  // block 0 is being held back
	aheadMeantime atomic.Int32 // readahead fetches that arrived while it was
	ahead         chan int64   // the blocks readahead fetched
	aheadSeen     chan struct{}
	seen          atomic.Bool
}

func (g *firstReadGetter) GetBlock(ctx context.Context, b BlockRef, p []byte) error {
	if b.Index == 0 {
		g.held.Store(true)
		select { // a readahead fetch now would share the tier below with this one
		case <-g.aheadSeen:
		case <-time.After(g.hold):
		case <-ctx.Done():
			return ctx.Err()
		}
		g.held.Store(false)
	} else {
		if g.held.Load() {
			g.aheadMeantime.Add(1)
		}
		if source.IsReadahead(ctx) && g.seen.CompareAndSwap(false, true) {
			close(g.aheadSeen)
		}
		g.ahead <- b.Index
	}
	return g.memGetter.GetBlock(ctx, b, p)
}

// TestFirstReadOfARunBeforeItsReadahead: the read that starts a sequential
// run is answered before the blocks ahead of it are asked for, so they do
// not share the tier below with the bytes the reader waits for; they are
// asked for right after it.
func TestFirstReadOfARunBeforeItsReadahead(t *testing.T) {
	const bs, ra = 64 << 10, 4
	mg := newMemGetter()
	want := testutil.RandBytes(8*bs, 3)
	obj := mg.add("f", want)
	// Without the order, the readahead's fetches arrive within the hold
	// and end it at once.
	g := &firstReadGetter{memGetter: mg, hold: 300 * time.Millisecond, ahead: make(chan int64, 8), aheadSeen: make(chan struct{})}
	c := newTestCache(t, g, func(c *Config) { c.DiskDir = ""; c.BlockSize = bs; c.Readahead = ra })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	p := make([]byte, 4096)
	if n, err := c.NewReader(obj).ReadAt(ctx, p, 0); err != nil || n != len(p) || string(p) != string(want[:len(p)]) {
		t.Fatalf("first read: %d bytes, %v; want the object's first %d bytes", n, err, len(p))
	}
	if n := g.aheadMeantime.Load(); n != 0 {
		t.Fatalf("%d readahead fetches reached the tier below while the first read waited for its block", n)
	}
	got := map[int64]bool{}
	for len(got) < ra {
		select {
		case i := <-g.ahead:
			got[i] = true
		case <-ctx.Done():
			t.Fatalf("readahead after the first read fetched blocks %v, want 1..%d", got, ra)
		}
	}
	for i := int64(1); i <= ra; i++ {
		if !got[i] {
			t.Fatalf("readahead after the first read fetched blocks %v, want 1..%d", got, ra)
		}
	}
}
