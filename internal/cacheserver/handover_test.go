package cacheserver

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/metrics"
)

// TestLeavingWorkerHandsOverItsBlocks: a worker that leaves the set hands
// the blocks it served to the peer that remains, which then serves the
// file without the origin sending it again; a block the leaving worker
// does not hold is not fetched from the origin by the handover.
func TestLeavingWorkerHandsOverItsBlocks(t *testing.T) {
	const size = 8*testBlock + 1234
	o := startOrigin(t, 2, size)
	osrc := o.source(t)
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
	pool := func(u string) *Pool {
		p := peerPool(t, 5*time.Second, u)
		p.cfg.Metrics = metrics.NewCache(nil)
		return p
	}

	leaving := startWorker(t, osrc)
	ca, _, _ := newClient(t, []string{leaving.url}, nil)
	read(ca, "shard-00.bin")
	toB := pool(leaving.url)
	stays := startWorkerPeers(t, osrc, nil, &PeerGetter{Peers: toB, Origin: blockcache.OriginGetter{Source: osrc}}, toB)
	toStays := pool(stays.url)
	e0, err := osrc.Stat(ctx, "shard-00.bin")
	if err != nil {
		t.Fatal(err)
	}

	// A handover from a worker that holds nothing: nothing is taken, and
	// the origin is not asked for the block (the empty worker lists the
	// dataset, a few hundred bytes).
	empty := startWorker(t, osrc)
	sent := o.proxy.BodyBytes()
	r, err := toStays.handover(ctx, toStays.order("x")[0], handoverRequest{Port: empty.port(t),
		Blocks: []handoverBlock{{Path: "shard-00.bin", Version: e0.Version, Size: e0.Size, Index: 1}}})
	if err != nil || r != (handoverReply{Missing: 1}) {
		t.Fatalf("handover of a block the leaving worker does not hold: %+v, %v; want 1 missing", r, err)
	}
	if got := o.proxy.BodyBytes() - sent; got >= testBlock/16 {
		t.Errorf("the origin sent %d bytes for a handover block no peer holds, want only a listing", got)
	}
	sent = o.proxy.BodyBytes()

	leaving.api.Drain()
	leaving.api.HandOver(ctx, toStays, leaving.port(t))
	for i := range int64(9) {
		b := blockcache.BlockRef{Object: blockcache.ObjectRef{Source: stays.api.srcID, Path: "shard-00.bin", Version: e0.Version,
			Size: e0.Size}, Index: i, BlockSize: testBlock}
		if !stays.cache.Holds(b) {
			t.Errorf("block %d was not handed over", i)
		}
	}
	if got := promtest.ToFloat64(toB.cfg.Metrics.PeerBytes); got != float64(e0.Size) {
		t.Errorf("the remaining worker pulled %.0f bytes from the leaving one, want the file's %d", got, e0.Size)
	}
	if got := o.proxy.BodyBytes() - sent; got != 0 {
		t.Errorf("the origin sent %d bytes during the handover, want 0", got)
	}
	cb, _, _ := newClient(t, []string{stays.url}, nil)
	sent = o.proxy.BodyBytes()
	read(cb, "shard-00.bin")
	if got := o.proxy.BodyBytes() - sent; got >= testBlock/16 {
		t.Errorf("the origin sent %d bytes when the remaining worker served the handed-over file, want only its listing", got)
	}
}

// TestHandoverPassesOverALeavingPeer: workers scale down in parallel, so
// a leaving worker's peers may include one that is leaving too. Its
// blocks go to the next peer in HRW order: the one that stays ends up
// with every block, whichever peer each block hashed to first.
func TestHandoverPassesOverALeavingPeer(t *testing.T) {
	const size = 8*testBlock + 1234
	o := startOrigin(t, 1, size)
	osrc := o.source(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leaving := startWorker(t, osrc)
	e, err := osrc.Stat(ctx, "shard-00.bin")
	if err != nil {
		t.Fatal(err)
	}
	ca, _, _ := newClient(t, []string{leaving.url}, nil)
	obj := blockcache.ObjectRef{Source: "test", Path: "shard-00.bin", Version: e.Version, Size: e.Size}
	if n, err := ca.ReadAt(ctx, obj, make([]byte, e.Size), 0); err != nil || int64(n) != e.Size {
		t.Fatalf("read through the leaving worker: %d bytes, %v", n, err)
	}
	alsoLeaving := startWorkerPeers(t, osrc, nil, blockcache.OriginGetter{Source: osrc}, peerPool(t, 5*time.Second, leaving.url))
	alsoLeaving.api.Drain()
	stays := startWorkerPeers(t, osrc, nil, blockcache.OriginGetter{Source: osrc}, peerPool(t, 5*time.Second, leaving.url))

	leaving.api.Drain()
	leaving.api.HandOver(ctx, peerPool(t, 5*time.Second, alsoLeaving.url, stays.url), leaving.port(t))
	for i := range int64(9) {
		b := blockcache.BlockRef{Object: blockcache.ObjectRef{Source: stays.api.srcID, Path: "shard-00.bin", Version: e.Version,
			Size: e.Size}, Index: i, BlockSize: testBlock}
		if !stays.cache.Holds(b) {
			t.Errorf("block %d did not reach the worker that stays", i)
		}
	}
}

// TestHandoverRequests: what the receiving side refuses.
func TestHandoverRequests(t *testing.T) {
	o := startOrigin(t, 1, testBlock)
	osrc := o.source(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	other := startWorker(t, osrc)
	peers, err := NewPool(ctx, PoolConfig{URLs: []string{other.url}, TokenFile: tokenFile(t, testToken), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	withPeers := startWorkerPeers(t, osrc, nil, &PeerGetter{Peers: peers, Origin: blockcache.OriginGetter{Source: osrc}}, peers)
	noPeers := startWorker(t, osrc)
	many := `{"port":80,"blocks":[` + strings.Repeat(`{"path":"a","version":"v","size":1,"index":0},`, maxHandoverBlocks) +
		`{"path":"a","version":"v","size":1,"index":0}]}`
	for _, tc := range []struct {
		name, body, token string
		to                *testWorker
		want              int
	}{
		{"no token", `{"port":80}`, "", withPeers, http.StatusUnauthorized},
		{"a worker without peers", `{"port":80}`, testToken, noPeers, http.StatusNotFound},
		{"not JSON", `port=80`, testToken, withPeers, http.StatusBadRequest},
		{"no port", `{"blocks":[]}`, testToken, withPeers, http.StatusBadRequest},
		{"too many blocks", many, testToken, withPeers, http.StatusBadRequest},
		{"blocks that are no blocks", `{"port":1,"blocks":[{"path":"../x","version":"v","size":1,"index":0},` +
			`{"path":"a","version":"","size":1,"index":0},{"path":"a","version":"v","size":10,"index":1}]}`, testToken, withPeers, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, tc.to.url+"/v1/datasets/default/handover", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, strings.TrimSpace(b.String()), tc.want)
			}
			if tc.want == http.StatusOK && !strings.Contains(b.String(), `"missing":3`) {
				t.Errorf("answer %s, want 3 missing", b.String())
			}
		})
	}
	if got := o.proxy.BodyBytes(); got != 0 {
		t.Errorf("the origin sent %d bytes for refused handovers, want 0", got)
	}
}
