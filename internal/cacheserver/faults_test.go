package cacheserver

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
)

// gate is a TCP proxy in front of a worker that can be paused: while
// paused it accepts connections and forwards nothing in either direction,
// as a worker stopped by SIGSTOP or cut off by a firewall that drops
// packets looks to its clients.
type gate struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	paused bool
	resume chan struct{}
}

func startGate(t *testing.T, target string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: strings.TrimPrefix(target, "http://"), resume: make(chan struct{})}
	close(g.resume)
	t.Cleanup(func() { g.setPaused(false); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go g.serve(c)
		}
	}()
	return g
}

func (g *gate) url() string { return "http://" + g.ln.Addr().String() }

func (g *gate) setPaused(p bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p == g.paused {
		return
	}
	g.paused = p
	if p {
		g.resume = make(chan struct{})
	} else {
		close(g.resume)
	}
}

// wait blocks while the gate is paused.
func (g *gate) wait() {
	g.mu.Lock()
	ch := g.resume
	g.mu.Unlock()
	<-ch
}

func (g *gate) serve(c net.Conn) {
	defer c.Close()
	g.wait()
	up, err := net.Dial("tcp", g.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			g.wait()
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
}

// faultClient is a reader's cache over workers with its own metrics.
func faultClient(t *testing.T, urls []string, fallback source.Source) (*blockcache.Cache, *Source, *Pool, *metrics.Cache) {
	t.Helper()
	m := metrics.NewCache(prometheus.NewRegistry())
	pool, err := NewPool(context.Background(), PoolConfig{URLs: urls, TokenFile: tokenFile(t, testToken), Insecure: true,
		Silence: time.Second, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go pool.Run(ctx)
	src := NewSource(pool, "test", fallback)
	cache, err := blockcache.New(blockcache.Config{BlockSize: testBlock, MemoryBytes: 8 << 20, Readahead: 4,
		FetchTimeout: 30 * time.Second, Getter: blockcache.OriginGetter{Source: src}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	return cache, src, pool, m
}

func (p *Pool) isDown(url string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range p.workers {
		if w.url == url {
			return w.down
		}
	}
	return false
}

// TestSilentWorkerCostsNoError: one of three workers stops answering
// (connections stay open) while 8 clients read; every byte arrives, no read
// fails, each client marks the worker failed (or hedged around it), and
// once it answers again the prober brings it back.
func TestSilentWorkerCostsNoError(t *testing.T) {
	tests := []struct {
		name       string
		pauseAt    int // file index at which the gate closes
		resumeLate bool
	}{
		{name: "paused from the start", pauseAt: 0},
		{name: "paused mid-burst, then resumed", pauseAt: 2, resumeLate: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := startOrigin(t, 6, 2<<20)
			var urls []string
			var g *gate
			for i := 0; i < 3; i++ {
				w := startWorker(t, o.source(t))
				if i == 1 {
					g = startGate(t, w.url)
					urls = append(urls, g.url())
					continue
				}
				urls = append(urls, w.url)
			}
			var clients []*blockcache.Cache
			var srcs []*Source
			var pools []*Pool
			var ms []*metrics.Cache
			for i := 0; i < 8; i++ {
				c, s, p, m := faultClient(t, urls, nil)
				clients, srcs, pools, ms = append(clients, c), append(srcs, s), append(pools, p), append(ms, m)
			}
			var once sync.Once
			burst(t, clients, srcs, o, func(client, file int) {
				if file == tc.pauseAt {
					once.Do(func() { g.setPaused(true) })
				}
			})
			var failed, hedgeWins float64
			for _, m := range ms {
				failed += testutil.ToFloat64(m.WorkerFailures.WithLabelValues("silent")) +
					testutil.ToFloat64(m.WorkerFailures.WithLabelValues("slow"))
				hedgeWins += testutil.ToFloat64(m.HedgeWins)
			}
			if failed+hedgeWins == 0 {
				t.Fatal("no client noticed the silent worker: the test did not exercise the fault")
			}
			t.Logf("clients marked the worker failed %v times and won %v hedges", failed, hedgeWins)
			if !tc.resumeLate {
				return
			}
			g.setPaused(false)
			deadline := time.Now().Add(15 * time.Second)
			for pools[0].isDown(g.url()) {
				if time.Now().After(deadline) {
					t.Fatal("the resumed worker was not brought back by the prober")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// slowOrigin answers stats from the real origin but holds reads until
// their context ends.
type slowOrigin struct{ source.Source }

func (s slowOrigin) ReadAt(ctx context.Context, p, v string, buf []byte, off int64) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestSlowOriginIsAnAnswer: a worker whose origin does not answer within
// the client's deadline answers 504 before it; the client reads the origin
// itself (it holds credentials) and keeps the worker in the set.
func TestSlowOriginIsAnAnswer(t *testing.T) {
	o := startOrigin(t, 1, 1<<20)
	w := startWorker(t, slowOrigin{o.source(t)})
	m := metrics.NewCache(prometheus.NewRegistry())
	pool, err := NewPool(context.Background(), PoolConfig{URLs: []string{w.url}, TokenFile: tokenFile(t, testToken), Insecure: true,
		Timeout: 1500 * time.Millisecond, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	src := NewSource(pool, "test", o.source(t))
	cache, err := blockcache.New(blockcache.Config{BlockSize: testBlock, MemoryBytes: 8 << 20,
		FetchTimeout: 20 * time.Second, Getter: blockcache.OriginGetter{Source: src}})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if err := readDataset(context.Background(), cache, src, o, nil); err != nil {
		t.Fatalf("read with a slow origin behind the worker: %v", err)
	}
	if pool.isDown(w.url) {
		t.Error("the worker was marked failed; its 504 says it is alive")
	}
	for _, reason := range []string{"silent", "slow", "error"} {
		if n := testutil.ToFloat64(m.WorkerFailures.WithLabelValues(reason)); n != 0 {
			t.Errorf("worker marked failed %v times (%s)", n, reason)
		}
	}
}

// TestWorkerAnswers504BeforeTheDeadline: the worker itself, asked with a
// short deadline for a block its origin does not deliver, answers 504 with
// interim 102s before, within the deadline.
func TestWorkerAnswers504BeforeTheDeadline(t *testing.T) {
	o := startOrigin(t, 1, 1<<20)
	w := startWorker(t, slowOrigin{o.source(t)})
	e, err := o.source(t).Stat(context.Background(), "shard-00.bin")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, w.url+"/v1/datasets/default/read?path=shard-00.bin&off=0&len=4096&version="+
		e.Version, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set(TimeoutHeader, "1500")
	var interim int
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
			if code == http.StatusProcessing {
				interim++
			}
			return nil
		}}))
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if took := time.Since(start); resp.StatusCode != http.StatusGatewayTimeout || took > 1500*time.Millisecond {
		t.Fatalf("status %d after %v (%s); want 504 within the 1.5 s deadline", resp.StatusCode, took, body)
	}
	if !originTrouble(errorFromStatus(resp.StatusCode, string(body))) {
		t.Errorf("a 504 must read as origin trouble")
	}
	if interim < 2 {
		t.Errorf("%d interim responses in 1.5 s; want one after 20 ms and one every 500 ms", interim)
	}
}
