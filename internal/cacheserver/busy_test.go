package cacheserver

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/blockcache"
)

// TestBusyWorkerIsNotFailed: a worker with too many requests in flight
// answers 429; the client waits for it instead of failing it and asking
// the next worker, which would fetch the block from the origin again.
func TestBusyWorkerIsNotFailed(t *testing.T) {
	o := startOrigin(t, 1, 1<<20)
	ws := map[string]*testWorker{}
	var urls []string
	for i := 0; i < 2; i++ {
		w := startWorker(t, o.source(t))
		ws[w.url] = w
		urls = append(urls, w.url)
	}
	cache, src, pool, _ := faultClient(t, urls, nil)
	e, err := src.Stat(context.Background(), "shard-00.bin")
	if err != nil {
		t.Fatal(err)
	}
	key := "shard-00.bin\x00" + e.Version + "\x000"
	owner := ws[pool.order(key)[0].url]
	owner.api.slots = make(chan struct{}, 1)
	owner.api.slots <- struct{}{} // every data request finds it full

	before := o.proxy.BodyBytes() // the stat's listing
	obj := blockcache.ObjectRef{Source: "test", Path: "shard-00.bin", Version: e.Version, Size: e.Size}
	buf := make([]byte, 1000)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	_, err = cache.ReadAt(ctx, obj, buf, 0)
	cancel()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read while the block's worker is busy = %v; want the reader's deadline", err)
	}
	if pool.isDown(owner.url) {
		t.Error("the client failed a worker that was only busy")
	}
	if got := o.proxy.BodyBytes() - before; got != 0 {
		t.Errorf("the origin sent %d bytes: another worker fetched the busy worker's block", got)
	}

	<-owner.api.slots // room again
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cache.ReadAt(ctx, obj, buf, 0); err != nil {
		t.Fatalf("read once the worker has room: %v", err)
	}
	if !bytes.Equal(buf, o.files["shard-00.bin"][:len(buf)]) {
		t.Fatal("wrong bytes")
	}
}

// TestWatchdogCountsTheWorkersOtherRequests: an attempt without a sign of
// life of its own is not silent while the worker answers other requests;
// it is once the worker falls silent on all of them.
func TestWatchdogCountsTheWorkersOtherRequests(t *testing.T) {
	w := &worker{url: "http://worker"}
	const silence = 300 * time.Millisecond
	ctx, wd := watchSilence(context.Background(), w, silence, nil)
	defer wd.stop()
	other := time.NewTicker(silence / 6) // another request's signs of life
	busyUntil := time.Now().Add(4 * silence)
	for time.Now().Before(busyUntil) {
		select {
		case <-ctx.Done():
			t.Fatalf("the attempt ended while the worker answered other requests: %v", context.Cause(ctx))
		case <-other.C:
			w.lastSign.Store(time.Now().UnixNano())
		}
	}
	other.Stop()
	select {
	case <-ctx.Done():
		if !errors.Is(context.Cause(ctx), errSilent) {
			t.Fatalf("cause = %v, want errSilent", context.Cause(ctx))
		}
	case <-time.After(10 * silence):
		t.Fatal("the attempt was not ended after the worker fell silent on every request")
	}
}
