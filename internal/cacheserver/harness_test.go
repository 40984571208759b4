package cacheserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

const (
	testBlock = 256 << 10
	testToken = "s3cr3t-token"
)

// origin is a real versitygw with a dataset, behind a counting proxy.
type origin struct {
	srv   *s3server.Server
	proxy *faultproxy.Proxy
	files map[string][]byte
	total int64
}

func startOrigin(t *testing.T, nfiles, size int) *origin {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	o := &origin{srv: srv, files: map[string][]byte{}}
	for i := 0; i < nfiles; i++ {
		p := fmt.Sprintf("shard-%02d.bin", i)
		o.files[p] = testutil.RandBytes(size+i*1000, uint64(i))
		o.total += int64(len(o.files[p]))
		srv.Put(t, "data", p, o.files[p])
	}
	proxy, err := faultproxy.New(srv.Endpoint, faultproxy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	o.proxy = proxy
	return o
}

func (o *origin) source(t *testing.T) source.Source {
	src, err := source.Parse("s3://data?pathStyle=true&endpoint="+o.proxy.URL(),
		source.Options{AccessKey: o.srv.AccessKey, SecretKey: o.srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	return source.WithRetry(src, source.DefaultRetryPolicy())
}

// testWorker is a worker API on a real loopback listener.
type testWorker struct {
	url   string
	http  *http.Server
	api   *Server
	cache *blockcache.Cache
	ops   opCounter
}

// opCounter counts a worker's data requests by operation (the last path
// element), answers 404 to the operations in refuse, as a worker of a
// version without them would, and runs gate, when set, before serving.
type opCounter struct {
	mu     sync.Mutex
	counts map[string]int
	refuse map[string]bool
	gate   func(*http.Request)
}

func (c *opCounter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := path.Base(r.URL.Path)
		c.mu.Lock()
		if c.counts == nil {
			c.counts = map[string]int{}
		}
		c.counts[op]++
		refused, gate := c.refuse[op], c.gate
		c.mu.Unlock()
		if gate != nil {
			gate(r)
		}
		if refused {
			http.Error(w, "unknown operation", http.StatusNotFound)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (c *opCounter) count(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[op]
}

func (c *opCounter) setGate(gate func(*http.Request)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gate = gate
}

func (c *opCounter) setRefused(op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refuse = map[string]bool{op: true}
}

func startWorker(t *testing.T, src source.Source) *testWorker {
	t.Helper()
	return startWorkerTLS(t, src, nil)
}

// startWorkerTLS starts a worker serving TLS with tc (nil: plain HTTP).
func startWorkerTLS(t *testing.T, src source.Source, tc *tls.Config) *testWorker {
	t.Helper()
	return startWorkerWith(t, src, tc, blockcache.OriginGetter{Source: src})
}

// startWorkerWith starts a worker whose cache reads from getter.
func startWorkerWith(t *testing.T, src source.Source, tc *tls.Config, getter blockcache.Getter) *testWorker {
	t.Helper()
	return startWorkerPeers(t, src, tc, getter, nil)
}

// startWorkerPeers is startWorkerWith for a worker with peers (it takes
// handovers from them).
func startWorkerPeers(t *testing.T, src source.Source, tc *tls.Config, getter blockcache.Getter, peers *Pool) *testWorker {
	t.Helper()
	cache, err := blockcache.New(blockcache.Config{BlockSize: testBlock, MemoryBytes: 64 << 20,
		DiskDir: t.TempDir(), Getter: getter})
	if err != nil {
		t.Fatal(err)
	}
	api, err := NewServer(ServerConfig{Listings: listcache.New(src, time.Minute), Cache: cache, Auth: &StaticToken{token: []byte(testToken)},
		Peers: peers})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &testWorker{api: api, cache: cache}
	hs := &http.Server{Handler: w.ops.wrap(api.Handler())}
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	scheme := "https://"
	if tc == nil {
		hs.Protocols.SetUnencryptedHTTP2(true)
		scheme = "http://"
	} else {
		ln = tls.NewListener(ln, tc)
	}
	go hs.Serve(ln)
	w.url, w.http = scheme+ln.Addr().String(), hs
	t.Cleanup(func() { hs.Close(); cache.Close() })
	return w
}

// kill closes the listener and every connection at once, as a crash would.
func (w *testWorker) kill() { w.http.Close() }

func tokenFile(t *testing.T, tok string) string {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// peerPool is a worker's pool of its peers at urls, with a per-request
// timeout.
func peerPool(t *testing.T, timeout time.Duration, urls ...string) *Pool {
	t.Helper()
	p, err := NewPool(context.Background(), PoolConfig{URLs: urls, TokenFile: tokenFile(t, testToken), Insecure: true, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// port is the port w serves on.
func (w *testWorker) port(t *testing.T) int {
	t.Helper()
	u, err := url.Parse(w.url)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// client is a reader's block cache over the workers, as a mount has.
func newClient(t *testing.T, urls []string, fallback source.Source) (*blockcache.Cache, *Source, *Pool) {
	t.Helper()
	return newClientWith(t, PoolConfig{URLs: urls, TokenFile: tokenFile(t, testToken), Timeout: 5 * time.Second, Insecure: true}, fallback)
}

// newClientWith is newClient with the pool's configuration pc.
func newClientWith(t *testing.T, pc PoolConfig, fallback source.Source) (*blockcache.Cache, *Source, *Pool) {
	t.Helper()
	pool, err := NewPool(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	src := NewSource(pool, "test", fallback)
	cache, err := blockcache.New(blockcache.Config{BlockSize: testBlock, MemoryBytes: 8 << 20, Readahead: 4,
		Getter: blockcache.OriginGetter{Source: src}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	return cache, src, pool
}
