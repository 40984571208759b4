package cacheserver

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/blockcache"
)

// readDataset reads every file through a client cache, listing through
// the workers, and compares bytes.
func readDataset(ctx context.Context, c *blockcache.Cache, src *Source, o *origin, during func(i int)) error {
	entries, err := src.List(ctx, "")
	if err != nil {
		return err
	}
	if len(entries) != len(o.files) {
		return fmt.Errorf("listing has %d entries, want %d", len(entries), len(o.files))
	}
	for i, e := range entries {
		if during != nil {
			during(i)
		}
		obj := blockcache.ObjectRef{Source: src.ID(), Path: e.Name, Version: e.Version, Size: e.Size}
		r := c.NewReader(obj)
		got := make([]byte, e.Size)
		for off := int64(0); off < e.Size; off += 1 << 20 {
			if _, err := r.ReadAt(ctx, got[off:min(off+1<<20, e.Size)], off); err != nil {
				return fmt.Errorf("%s at %d: %w", e.Name, off, err)
			}
		}
		if !bytes.Equal(got, o.files[e.Name]) {
			return fmt.Errorf("%s: bytes differ from the origin", e.Name)
		}
	}
	return nil
}

func burst(t *testing.T, clients []*blockcache.Cache, srcs []*Source, o *origin, during func(client, file int)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var hook func(int)
			if during != nil {
				hook = func(f int) { during(i, f) }
			}
			if err := readDataset(context.Background(), clients[i], srcs[i], o, hook); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestBurstReadsOriginOnce(t *testing.T) {
	o := startOrigin(t, 6, 2<<20)
	var urls []string
	for i := 0; i < 3; i++ {
		urls = append(urls, startWorker(t, o.source(t)).url)
	}
	var clients []*blockcache.Cache
	var srcs []*Source
	for i := 0; i < 8; i++ {
		c, s, _ := newClient(t, urls, nil)
		clients, srcs = append(clients, c), append(srcs, s)
	}
	burst(t, clients, srcs, o, nil)
	if got := o.proxy.BodyBytes(); got < o.total || got > o.total+testBlock {
		t.Errorf("origin served %d bytes for a %d-byte dataset, want it once (± one block)", got, o.total)
	}
}

func TestWorkerDiesMidBurst(t *testing.T) {
	o := startOrigin(t, 6, 2<<20)
	var workers []*testWorker
	var urls []string
	for i := 0; i < 3; i++ {
		w := startWorker(t, o.source(t))
		workers, urls = append(workers, w), append(urls, w.url)
	}
	var clients []*blockcache.Cache
	var srcs []*Source
	for i := 0; i < 8; i++ {
		c, s, _ := newClient(t, urls, nil)
		clients, srcs = append(clients, c), append(srcs, s)
	}
	var once sync.Once
	burst(t, clients, srcs, o, func(client, file int) {
		if file == 2 {
			once.Do(workers[1].kill)
		}
	})
	if got := o.proxy.BodyBytes(); got > o.total*3/2 {
		t.Errorf("origin served %d bytes, want at most 1.5 × %d", got, o.total)
	}
}

func TestWorkerAddedMidBurst(t *testing.T) {
	o := startOrigin(t, 6, 2<<20)
	first := startWorker(t, o.source(t))
	var clients []*blockcache.Cache
	var srcs []*Source
	var pools []*Pool
	for i := 0; i < 4; i++ {
		c, s, p := newClient(t, []string{first.url}, nil)
		clients, srcs, pools = append(clients, c), append(srcs, s), append(pools, p)
	}
	second := startWorker(t, o.source(t))
	var added atomic.Bool
	burst(t, clients, srcs, o, func(client, file int) {
		if file == 3 {
			pools[client].setWorkers([]string{first.url, second.url})
			added.Store(true)
		}
	})
	if n := len(pools[0].Workers()); n != 2 {
		t.Fatalf("pool has %d workers after the refresh, want 2", n)
	}
	if _, disk := second.cache.Stats(); disk == 0 {
		t.Error("the added worker served nothing")
	}
}

func TestFallbackToOriginWhenAllWorkersFail(t *testing.T) {
	o := startOrigin(t, 2, 1<<20)
	w := startWorker(t, o.source(t))
	c, s, _ := newClient(t, []string{w.url}, o.source(t))
	w.kill()
	start := time.Now()
	if err := readDataset(context.Background(), c, s, o, nil); err != nil {
		t.Fatalf("with the only worker dead and origin credentials: %v", err)
	}
	t.Logf("read through the origin fallback in %s", time.Since(start))
}

func TestWorkersFoundByDNS(t *testing.T) {
	o := startOrigin(t, 1, 1<<20)
	w := startWorker(t, o.source(t))
	_, port, _ := strings.Cut(strings.TrimPrefix(w.url, "http://"), ":")
	pool, err := NewPool(context.Background(), PoolConfig{DNS: "localhost:" + port, Refresh: 50 * time.Millisecond,
		TokenFile: tokenFile(t, testToken), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pool.Run(ctx)
	found := false
	for _, u := range pool.Workers() {
		found = found || u == w.url
	}
	if !found {
		t.Fatalf("DNS gave workers %v, want %s among them", pool.Workers(), w.url)
	}
	entries, err := NewSource(pool, "test", nil).List(context.Background(), "")
	if err != nil || len(entries) != 1 {
		t.Fatalf("list through DNS-found workers: %v, %v", entries, err)
	}
	if _, err := NewPool(context.Background(), PoolConfig{DNS: "no-port"}); err != nil {
		t.Fatalf("a bad name is retried later, not fatal: %v", err)
	}
}
