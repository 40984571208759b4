package blockcache

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
)

// orderGetter serves blocks from memGetter once gate is open and records
// the order of fetches and whether each was marked readahead.
type orderGetter struct {
	*memGetter
	gate    chan struct{}
	mu      sync.Mutex
	order   []int64
	ahead   map[int64]bool
	started chan int64
}

func (g *orderGetter) GetBlock(ctx context.Context, b BlockRef, p []byte) error {
	g.started <- b.Index
	<-g.gate
	g.mu.Lock()
	g.order = append(g.order, b.Index)
	g.ahead[b.Index] = source.IsReadahead(ctx)
	g.mu.Unlock()
	return g.memGetter.GetBlock(ctx, b, p)
}

// TestReaderPromotesReadahead: a reader that wants a block already queued
// as readahead makes it demand: it is fetched before readahead queued
// earlier, and the tier below is not told it is readahead.
func TestReaderPromotesReadahead(t *testing.T) {
	mg := newMemGetter()
	data := testutil.RandBytes(4*(64<<10), 16)
	obj := mg.add("f", data)
	g := &orderGetter{memGetter: mg, gate: make(chan struct{}), ahead: map[int64]bool{}, started: make(chan int64, 8)}
	c := newTestCache(t, g, func(c *Config) { c.MaxFetches = 1 })
	ctx := context.Background()
	// Block 0 takes the only slot and holds it until the gate opens.
	first := make(chan error, 1)
	go func() { _, err := c.ReadAt(ctx, obj, make([]byte, 1), 0); first <- err }()
	if got := <-g.started; got != 0 {
		t.Fatalf("first fetch of block %d, want 0", got)
	}
	c.Prefetch(obj, 1, 1)
	waitFetchQueue(t, c, 0, 1)
	c.Prefetch(obj, 2, 2)
	waitFetchQueue(t, c, 0, 2)
	// A reader now waits for block 2, behind readahead of block 1.
	second := make(chan error, 1)
	go func() { _, err := c.ReadAt(ctx, obj, make([]byte, 1), 2*(64<<10)); second <- err }()
	waitFetchQueue(t, c, 1, 1)
	close(g.gate)
	for _, ch := range []chan error{first, second} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		n := len(g.order)
		g.mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 3 fetches done", n)
		}
		time.Sleep(time.Millisecond)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.order[1] != 2 || g.order[2] != 1 {
		t.Errorf("fetch order %v; want block 2 (a reader waits) before readahead block 1", g.order)
	}
	if g.ahead[2] || !g.ahead[1] {
		t.Errorf("readahead marks %v; want block 2 demand, block 1 readahead", g.ahead)
	}
}

// waitFetchQueue waits until the fetch slots queue demand and readahead
// waiters in these numbers (the queue, not a sleep, orders the test).
func waitFetchQueue(t *testing.T, c *Cache, demand, ahead int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, a := c.fetches.Waiting()
		if d == demand && a == ahead {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fetch queue %d demand / %d readahead, want %d / %d", d, a, demand, ahead)
		}
		time.Sleep(time.Millisecond)
	}
}
