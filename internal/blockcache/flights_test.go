package blockcache

import (
	"bytes"
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

// TestReadaheadContinuesIntoNextObject: a sequential reader whose
// readahead window passes the end of its object has the next object's
// first blocks fetched (those the window reaches; the next object is
// looked up once); a random reader
// of the same object does not.
func TestReadaheadContinuesIntoNextObject(t *testing.T) {
	const bs = 64 << 10
	for _, tc := range []struct {
		name    string
		offsets []int64
		want    int // blocks of the next object fetched
	}{
		{"sequential to the end", []int64{0, bs, 2 * bs, 3 * bs}, 2},
		{"random", []int64{3 * bs, 0, 2 * bs}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newMemGetter()
			a := g.add("a", testutil.RandBytes(4*bs, 1))
			b := g.add("b", testutil.RandBytes(8*bs, 2))
			c := newTestCache(t, g, func(c *Config) { c.Readahead = 2; c.MemoryBytes = 8 << 20; c.DiskBytes = 8 << 20 })
			r := c.NewReader(a)
			asked := make(chan struct{}, 8)
			r.SetNext(func() (ObjectRef, bool) { asked <- struct{}{}; return b, true })
			for _, off := range tc.offsets {
				if _, err := r.ReadAt(context.Background(), make([]byte, 1000), off); err != nil {
					t.Fatal(err)
				}
			}
			fetchedOfB := func() int {
				g.mu.Lock()
				defer g.mu.Unlock()
				n := 0
				for i := range int64(8) {
					n += g.fetches[c.block(b, i).Key()]
				}
				return n
			}
			if tc.want > 0 {
				<-asked
				for deadline := time.Now().Add(5 * time.Second); fetchedOfB() < tc.want; time.Sleep(5 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("%d blocks of the next object fetched after 5s, want %d", fetchedOfB(), tc.want)
					}
				}
			}
			// The reads and their readahead are done: nothing more comes.
			waitIdle(t, c)
			if got := fetchedOfB(); got != tc.want {
				t.Fatalf("%d blocks of the next object fetched, want %d", got, tc.want)
			}
			if n := len(asked); n != 0 {
				t.Fatalf("the next object was looked up %d more times", n)
			}
		})
	}
}

// waitIdle waits until no fetch is in flight and no readahead holds a slot.
func waitIdle(t *testing.T, c *Cache) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c.flights.mu.Lock()
		n := len(c.flights.m)
		c.flights.mu.Unlock()
		if n == 0 && len(c.prefetch) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d fetches still in flight after 5s", n)
		}
	}
}

// phaseGetter asks "peers" (AskingPeers) until askDone is closed, then
// "the origin" until originDone is closed, and serves from memGetter.
type phaseGetter struct {
	*memGetter
	asking, origin      chan struct{} // closed as each phase starts
	askDone, originDone chan struct{}
}

func (g *phaseGetter) GetBlock(ctx context.Context, b BlockRef, p []byte) error {
	done := AskingPeers(ctx)
	close(g.asking)
	<-g.askDone
	done()
	close(g.origin)
	<-g.originDone
	return g.memGetter.GetBlock(ctx, b, p)
}

// TestHeldOfFlightAskingPeers: while a block's fetch is asking peers,
// Held waits for it only for a peer that ranks below the cache (two
// workers asking each other would otherwise each wait for the other),
// and answers at once that it does not hold the block for the others;
// once the fetch reads the origin, Held waits for it for anyone. The
// block is fetched once either way.
func TestHeldOfFlightAskingPeers(t *testing.T) {
	for _, tc := range []struct {
		name string
		peer func(ctx context.Context, c *Cache) context.Context
		wait bool // Held waits for the fetch while it asks peers
	}{
		{"a peer of no rank", func(ctx context.Context, _ *Cache) context.Context { return ctx }, false},
		{"a peer ranked below", func(ctx context.Context, c *Cache) context.Context {
			return WithPeerRank(ctx, c.flights.rank-1)
		}, true},
		{"a peer ranked above", func(ctx context.Context, c *Cache) context.Context {
			return WithPeerRank(ctx, c.flights.rank+1)
		}, false},
		{"a peer of the same rank", func(ctx context.Context, c *Cache) context.Context {
			return WithPeerRank(ctx, c.flights.rank)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mg := newMemGetter()
			data := testutil.RandBytes(64<<10, 17)
			obj := mg.add("f", data)
			g := &phaseGetter{memGetter: mg, asking: make(chan struct{}), origin: make(chan struct{}),
				askDone: make(chan struct{}), originDone: make(chan struct{})}
			c := newTestCache(t, g, nil)
			c.flights.rank = 1 << 32 // room for the rows' ranks either side
			b := c.block(obj, 0)
			read := make(chan error, 1)
			go func() { _, err := c.ReadAt(context.Background(), obj, make([]byte, len(data)), 0); read <- err }()
			<-g.asking
			held := make(chan []byte, 2)
			heldFor := func() {
				got, _, release, ok, err := c.Held(tc.peer(context.Background(), c), b)
				if !ok || err != nil {
					held <- nil
					return
				}
				held <- append([]byte(nil), got...)
				release()
			}
			wantHeld := 1
			if tc.wait {
				go heldFor()
				waitWaiters(t, c, b.Key(), 2) // the reader and Held wait for the one fetch
				wantHeld++
			} else if heldFor(); <-held != nil {
				t.Fatal("Held of a block whose fetch asks peers answered with it; want not held")
			}
			close(g.askDone)
			<-g.origin
			go heldFor()
			waitWaiters(t, c, b.Key(), wantHeld+1)
			close(g.originDone)
			for range wantHeld {
				if got := <-held; !bytes.Equal(got, data) {
					t.Errorf("Held returned %d bytes, not the block's", len(got))
				}
			}
			if err := <-read; err != nil {
				t.Fatal(err)
			}
			if n := mg.maxFetchesPerBlock(); n != 1 {
				t.Errorf("the block was fetched %d times, want once", n)
			}
		})
	}
}

// entryGetter holds each fetch at its entry, before it asks anyone,
// until release is closed.
type entryGetter struct {
	*memGetter
	entered, release chan struct{}
}

func (g *entryGetter) GetBlock(ctx context.Context, b BlockRef, p []byte) error {
	close(g.entered)
	<-g.release
	return g.memGetter.GetBlock(ctx, b, p)
}

// peersFirstGetter is an entryGetter that asks peers first.
type peersFirstGetter struct{ *entryGetter }

func (peersFirstGetter) AsksPeersFirst() {}

// TestPeersFirstFlightAsksFromItsStart: a flight of a cache whose Getter
// asks peers first counts as asking before its Getter has called
// AskingPeers, so no peer of no rank waits for it (it might yet ask that
// peer); a flight of another cache never asks.
func TestPeersFirstFlightAsksFromItsStart(t *testing.T) {
	for _, tc := range []struct {
		name       string
		getter     func(*entryGetter) Getter
		wantJoined bool
	}{
		{"peers first", func(g *entryGetter) Getter { return peersFirstGetter{g} }, false},
		{"the origin only", func(g *entryGetter) Getter { return g }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mg := newMemGetter()
			obj := mg.add("f", testutil.RandBytes(64<<10, 18))
			g := &entryGetter{memGetter: mg, entered: make(chan struct{}), release: make(chan struct{})}
			c := newTestCache(t, tc.getter(g), nil)
			read := make(chan error, 1)
			go func() { _, err := c.ReadAt(context.Background(), obj, make([]byte, 64<<10), 0); read <- err }()
			<-g.entered
			f := c.flights.joinExisting(c.block(obj, 0).Key(), false, 0, false)
			if joined := f != nil; joined != tc.wantJoined {
				t.Errorf("a peer of no rank joined the fetch: %v, want %v", joined, tc.wantJoined)
			}
			close(g.release)
			if f != nil {
				buf, _, err := c.flights.wait(context.Background(), f)
				if err != nil {
					t.Fatal(err)
				}
				buf.release()
			}
			if err := <-read; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// waitWaiters waits until key's flight has n waiters.
func waitWaiters(t *testing.T, c *Cache, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.flights.mu.Lock()
		f := c.flights.m[key]
		got := 0
		if f != nil {
			got = f.waiters
		}
		c.flights.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters of %s, want %d", got, key, n)
		}
		time.Sleep(time.Millisecond)
	}
}
