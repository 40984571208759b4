package cacheserver

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
)

// heldOrigin is a reverse proxy to an S3 server that forwards the first
// `after` bytes of every ranged GET's body and holds back the rest until
// release: an origin whose block is still on its way.
type heldOrigin struct {
	url     string
	release func()
	sent    atomic.Int64 // body bytes of ranged GETs forwarded
}

func startHeldOrigin(t *testing.T, target string, after int) *heldOrigin {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	h := &heldOrigin{}
	released := make(chan struct{})
	var once sync.Once
	h.release = func() { once.Do(func() { close(released) }) }
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && resp.StatusCode == http.StatusPartialContent {
			resp.Body = &heldBody{ReadCloser: resp.Body, left: after, released: released,
				ctx: resp.Request.Context(), sent: &h.sent}
		}
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	t.Cleanup(h.release) // runs first: a held body must not keep srv.Close waiting
	h.url = srv.URL
	return h
}

type heldBody struct {
	io.ReadCloser
	left     int
	released <-chan struct{}
	ctx      context.Context
	sent     *atomic.Int64
}

func (b *heldBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		select {
		case <-b.released:
			b.left = -1
		case <-b.ctx.Done():
			return 0, b.ctx.Err()
		}
	}
	if b.left > 0 {
		p = p[:min(len(p), b.left)]
	}
	n, err := b.ReadCloser.Read(p)
	if b.left > 0 {
		b.left -= n
	}
	b.sent.Add(int64(n))
	return n, err
}

// TestFirstBytesBeforeTheWholeBlock: a reader of the first bytes of a cold
// file gets them while the origin still holds back the rest of their
// block, through the cache workers (a range read answered from the
// worker's fetch in progress) and straight from the origin (the block's
// fetch streams to its waiters); the whole file then reads right, and the
// origin sent it once.
func TestFirstBytesBeforeTheWholeBlock(t *testing.T) {
	const size = 3 * testBlock
	o := startOrigin(t, 1, size)
	const name = "shard-00.bin"
	for _, tc := range []struct {
		name    string
		workers bool
	}{{"through a cache worker", true}, {"from the origin", false}} {
		t.Run(tc.name, func(t *testing.T) {
			held := startHeldOrigin(t, o.srv.Endpoint, 64<<10)
			origin, err := source.Parse("s3://data?pathStyle=true&endpoint="+held.url,
				source.Options{AccessKey: o.srv.AccessKey, SecretKey: o.srv.SecretKey})
			if err != nil {
				t.Fatal(err)
			}
			origin = source.WithRetry(origin, source.DefaultRetryPolicy())
			m := metrics.NewCache(prometheus.NewRegistry())
			var below source.Source = origin
			if tc.workers {
				w := startWorker(t, origin)
				pool, err := NewPool(context.Background(), PoolConfig{URLs: []string{w.url},
					TokenFile: tokenFile(t, testToken), Insecure: true, Metrics: m})
				if err != nil {
					t.Fatal(err)
				}
				below = NewSource(pool, "test", nil)
			}
			cache, err := blockcache.New(blockcache.Config{BlockSize: testBlock, MemoryBytes: 8 << 20,
				Getter: blockcache.OriginGetter{Source: below}, Metrics: m})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(cache.Close)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			e, err := below.Stat(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			obj := blockcache.ObjectRef{Source: below.ID(), Path: name, Version: e.Version, Size: e.Size}
			want := o.files[name]

			first := make([]byte, 4096)
			if _, err := cache.ReadAt(ctx, obj, first, 0); err != nil {
				t.Fatalf("first 4 KiB while the origin holds the rest of the block: %v", err)
			}
			if !bytes.Equal(first, want[:4096]) {
				t.Fatal("first 4 KiB differ from the origin")
			}
			if got := held.sent.Load(); got >= testBlock {
				t.Fatalf("the origin sent %d bytes before the first read returned; it holds back all but 64 KiB of a %d-byte block", got, testBlock)
			}
			ranges := testutil.ToFloat64(m.RangeReads)
			if tc.workers && ranges != 1 {
				t.Errorf("sluice_range_reads_total = %v, want 1 (the first read answered by the worker's range read)", ranges)
			} else if !tc.workers && ranges != 0 {
				t.Errorf("sluice_range_reads_total = %v from the origin, want 0", ranges)
			}

			held.release()
			got := make([]byte, len(want))
			for off := 0; off < len(want); off += 100 << 10 {
				if _, err := cache.ReadAt(ctx, obj, got[off:min(off+100<<10, len(want))], int64(off)); err != nil {
					t.Fatalf("read at %d: %v", off, err)
				}
			}
			if !bytes.Equal(got, want) {
				t.Fatal("file differs from the origin")
			}
			if sent := held.sent.Load(); sent != int64(len(want)) {
				t.Errorf("the origin sent %d body bytes for a %d-byte file, want each byte once", sent, len(want))
			}
		})
	}
}
