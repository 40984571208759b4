package cacheserver

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/metrics"
)

// TestJoiningWorkerFetchesFromItsPeer: a worker that joins a set whose
// other worker already read a file gets the file's blocks from that
// worker, and the origin sends it once; a block no peer holds comes from
// the origin; a peer that is down costs a read nothing but the attempt.
func TestJoiningWorkerFetchesFromItsPeer(t *testing.T) {
	const size = 8*testBlock + 1234
	o := startOrigin(t, 2, size)
	osrc := o.source(t)
	a := startWorker(t, osrc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	read := func(cache *blockcache.Cache, name string) {
		t.Helper()
		e, err := osrc.Stat(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, e.Size)
		obj := blockcache.ObjectRef{Source: "test", Path: name, Version: e.Version, Size: e.Size}
		if n, err := cache.ReadAt(ctx, obj, buf, 0); err != nil || !bytes.Equal(buf[:n], o.files[name]) {
			t.Fatalf("%s: %d bytes, %v; equal %v", name, n, err, bytes.Equal(buf[:n], o.files[name]))
		}
	}
	ca, _, _ := newClient(t, []string{a.url}, nil)
	read(ca, "shard-00.bin")
	sent := o.proxy.BodyBytes()
	if sent < int64(len(o.files["shard-00.bin"])) {
		t.Fatalf("the origin sent %d bytes for a file of %d", sent, len(o.files["shard-00.bin"]))
	}

	peers, err := NewPool(ctx, PoolConfig{URLs: []string{a.url}, TokenFile: tokenFile(t, testToken), Insecure: true,
		Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.NewCache(nil)
	peers.cfg.Metrics = m
	b := startWorkerWith(t, osrc, nil, &PeerGetter{Peers: peers, Origin: blockcache.OriginGetter{Source: osrc}})
	cb, _, _ := newClient(t, []string{b.url}, nil)
	read(cb, "shard-00.bin")
	// The joining worker lists the dataset (a few hundred bytes); no block
	// of the file may come from the origin again.
	if got := o.proxy.BodyBytes() - sent; got >= testBlock/16 {
		t.Errorf("the origin sent %d more bytes when a joining worker read the file its peer holds, want only its listing", got)
	}
	if got := promtest.ToFloat64(m.PeerBytes); got != float64(len(o.files["shard-00.bin"])) {
		t.Errorf("peer bytes %.0f, want the file's %d", got, len(o.files["shard-00.bin"]))
	}

	// A worker whose peers are one that holds nothing and the holder, in
	// either HRW order: it asks both before the origin.
	empty := startWorker(t, osrc)
	two, err := NewPool(ctx, PoolConfig{URLs: []string{empty.url, a.url}, TokenFile: tokenFile(t, testToken), Insecure: true,
		Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := startWorkerWith(t, osrc, nil, &PeerGetter{Peers: two, Origin: blockcache.OriginGetter{Source: osrc}})
	cc, _, _ := newClient(t, []string{c.url}, nil)
	sent = o.proxy.BodyBytes()
	read(cc, "shard-00.bin")
	if got := o.proxy.BodyBytes() - sent; got >= testBlock/16 {
		t.Errorf("the origin sent %d bytes to a worker with two peers, one of which holds the file; want only its listing", got)
	}

	// A file no worker read yet: the peer says it does not hold it, and
	// the joining worker reads the origin.
	sent = o.proxy.BodyBytes()
	read(cb, "shard-01.bin")
	if got := o.proxy.BodyBytes() - sent; got < int64(len(o.files["shard-01.bin"])) {
		t.Errorf("the origin sent %d bytes for a file no peer holds, want its %d", got, len(o.files["shard-01.bin"]))
	}
	if a.ops.count("read") == 0 {
		t.Error("the peer was never asked")
	}
	if peers.order("x")[0].down {
		t.Error("a peer that answered 'not held' was marked down")
	}
}

// TestWorkersAskingEachOtherDoNotWait: two workers that are each other's
// peer are asked for the same uncached block at once, and each asks the
// other while its own fetch is asking (both peer reads are held until
// both have arrived). Only the worker of the lower cache rank waits for
// the other's fetch, so both reads return the block long before the
// peers' 30 s timeout, the origin sends it once, and neither peer is
// marked down.
func TestWorkersAskingEachOtherDoNotWait(t *testing.T) {
	o := startOrigin(t, 1, testBlock)
	osrc := o.source(t)
	ga := &PeerGetter{Origin: blockcache.OriginGetter{Source: osrc}}
	gb := &PeerGetter{Origin: blockcache.OriginGetter{Source: osrc}}
	a := startWorkerWith(t, osrc, nil, ga)
	b := startWorkerWith(t, osrc, nil, gb)
	ctx := context.Background()
	ga.Peers, gb.Peers = peerPool(t, 30*time.Second, b.url), peerPool(t, 30*time.Second, a.url)

	var arrived atomic.Int32
	both := make(chan struct{})
	gate := func(r *http.Request) {
		if r.Header.Get(PeerHeader) != "1" || arrived.Add(1) > 2 {
			return
		}
		if arrived.Load() == 2 {
			close(both)
		}
		select {
		case <-both:
		case <-time.After(10 * time.Second):
			t.Error("only one worker asked its peer")
		}
	}
	a.ops.setGate(gate)
	b.ops.setGate(gate)

	const name = "shard-00.bin"
	e, err := osrc.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	// The key of the block the workers' servers fetch for a peer.
	obj := blockcache.ObjectRef{Source: osrc.ID(), Path: name, Version: e.Version, Size: e.Size}
	sent := o.proxy.BodyBytes()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, w := range []*testWorker{a, b} {
		wg.Go(func() {
			buf := make([]byte, e.Size)
			if n, err := w.cache.ReadAt(rctx, obj, buf, 0); err != nil || !bytes.Equal(buf[:n], o.files[name]) {
				t.Errorf("worker %s: %d bytes, %v; equal %v", w.url, n, err, bytes.Equal(buf[:n], o.files[name]))
			}
		})
	}
	wg.Wait()
	if arrived.Load() < 2 {
		t.Errorf("%d peer reads, want one from each worker", arrived.Load())
	}
	if sent = o.proxy.BodyBytes() - sent; sent >= 2*e.Size {
		t.Errorf("the origin sent %d bytes for a block of %d, want it once (and two listings)", sent, e.Size)
	}
	for _, p := range []*Pool{ga.Peers, gb.Peers} {
		if p.order("x")[0].down {
			t.Error("a peer that was asked while asking was marked down")
		}
	}
}
