package blockcache

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/testutil"
)

// TestLeasesSurviveEvictionAndReuse: readers hold leases on cached blocks
// while other reads evict those blocks from a memory tier of 16 blocks
// and the pool hands their buffers to new fetches; every byte of every
// lease must still be its block's when checked after, and the pool must
// really have reused buffers (far fewer mappings than fetches) while the
// readers' working set fits its limit.
func TestLeasesSurviveEvictionAndReuse(t *testing.T) {
	const bs, blocks = 64 << 10, 48
	for _, tc := range []struct {
		name   string
		disk   bool
		direct bool
	}{
		{"memory only", false, false},
		{"disk tier, buffered writes", true, false},
		{"disk tier, O_DIRECT writes", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newMemGetter()
			data := testutil.RandBytes(blocks*bs, 21)
			obj := g.add("f", data)
			c := newTestCache(t, g, func(cfg *Config) {
				cfg.MemoryBytes, cfg.Readahead, cfg.DirectWrites = 16*bs, 2, tc.direct
				if !tc.disk {
					cfg.DiskDir = ""
				}
			})
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for r := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(r), 7))
					ctx := context.Background()
					for range 60 {
						off := rng.Int64N(int64(len(data)) - bs)
						held, err := c.Read(ctx, obj, make([]byte, bs), off)
						if err != nil {
							errs <- err
							return
						}
						// Other blocks, enough to evict the held ones.
						for range 6 {
							o2 := rng.Int64N(int64(len(data)) - 1000)
							if _, err := c.ReadAt(ctx, obj, make([]byte, 1000), o2); err != nil {
								errs <- err
								return
							}
						}
						got := make([]byte, bs)
						held.CopyTo(got)
						held.Release()
						if !bytes.Equal(got, data[off:off+bs]) {
							errs <- fmt.Errorf("lease at %d changed under the reader", off)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			fetched := 0
			g.mu.Lock()
			for _, n := range g.fetches {
				fetched += n
			}
			g.mu.Unlock()
			if maps := int(c.pool.maps.Load()); maps*3 > fetched && !tc.disk {
				t.Fatalf("%d buffers mapped for %d fetches: the pool does not reuse them", maps, fetched)
			}
			// Once the disk writes are done, nothing holds a buffer but
			// the memory tier: the pool is back within its bound (a
			// leaked reference would keep a buffer mapped beyond it).
			if tc.disk && !c.behind.flush(obj, 10*time.Second) {
				t.Fatal("disk writes still queued after 10s")
			}
			// Readahead started by the last reads may still be loading:
			// wait for the fetches to end, then every buffer must be free.
			var mapped, free, limit int
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				c.mem.clear()
				c.flights.mu.Lock()
				n := len(c.flights.m)
				c.flights.mu.Unlock()
				c.pool.mu.Lock()
				mapped, free, limit = c.pool.mapped, len(c.pool.free), c.pool.limit
				c.pool.mu.Unlock()
				if n == 0 && len(c.prefetch) == 0 && mapped == free {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("10s after the reads, %d fetches in flight, %d buffers mapped, %d free", n, mapped, free)
				}
			}
			if mapped > limit+limit/16 {
				t.Fatalf("with every block released, %d buffers mapped (limit %d)", mapped, limit)
			}
		})
	}
}

// TestPoolBound: the pool keeps at most its limit of buffers mapped once
// every reference is released, and a buffer released more often than
// referenced is a panic, not a silent reuse.
func TestPoolBound(t *testing.T) {
	p := newBufferPool(8192, 2, nil)
	var held []*buffer
	for range 5 {
		held = append(held, p.get(8192))
	}
	small := p.get(100)
	if small.pool != nil || len(small.data) != 100 {
		t.Fatalf("a 100-byte block got a pooled buffer")
	}
	for _, b := range held {
		b.release()
	}
	p.mu.Lock()
	mapped, free := p.mapped, len(p.free)
	p.mu.Unlock()
	if mapped != 2 || free != 2 { // limit 2, no sixteenth over it
		t.Fatalf("after release: %d mapped, %d free; want 2 and 2", mapped, free)
	}
	b := p.get(8192)
	if p.maps.Load() != 5 {
		t.Fatalf("a free buffer was not reused: %d mappings", p.maps.Load())
	}
	b.release()
	defer func() {
		if recover() == nil {
			t.Fatal("a second release of a buffer did not panic")
		}
	}()
	b.release()
}
