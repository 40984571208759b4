package cacheserver

import (
	"context"
	"errors"
	"net/http"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
)

// PeerGetter is a cache worker's tier below its cache when it has peers.
// A block the worker does not hold is asked first of the workers next for
// it in HRW order (peersAsked of them: the one that owned it before this
// worker joined the set, then the one before), from their cache or fetch
// in flight only (PeerHeader), and then of the origin. So a worker that
// joins in the middle of a burst takes over its share of the blocks
// without the origin sending them again. A peer waits for a fetch of its
// own that is asking peers only when the asker ranks below it
// (PeerRankHeader, blockcache's askpeers.go); else it answers that it
// does not hold the block.
type PeerGetter struct {
	// Peers are the other workers of the Dataset (PoolConfig.Exclude
	// leaves this one out).
	Peers *Pool
	// Origin is the Getter of the origin.
	Origin blockcache.Getter
}

// peersAsked is how many peers, in HRW order, are asked for a block
// before the origin: the previous owner, and the one before it when
// workers joined one after the other (or a peer's view of the set was a
// DNS refresh behind).
const peersAsked = 2

type peerKey struct{}

func withPeer(ctx context.Context) context.Context { return context.WithValue(ctx, peerKey{}, true) }

func isPeer(ctx context.Context) bool {
	v, _ := ctx.Value(peerKey{}).(bool)
	return v
}

// notHeld reports whether err is a peer's answer that it does not hold
// the block (409).
func notHeld(err error) bool {
	var we *workerError
	return errors.As(err, &we) && we.code == http.StatusConflict
}

// GetBlock implements blockcache.Getter.
func (g *PeerGetter) GetBlock(ctx context.Context, b blockcache.BlockRef, p []byte) error {
	_, _, err := g.GetBlockChecksum(ctx, b, p)
	return err
}

// GetBlockChecksum implements the block cache's checksum getter: the CRC
// is the peer's, checked, or the origin's when it sends one.
func (g *PeerGetter) GetBlockChecksum(ctx context.Context, b blockcache.BlockRef, p []byte) (uint32, bool, error) {
	if crc, ok := g.fromPeers(ctx, b, p); ok {
		return crc, true, nil
	}
	if cg, ok := g.Origin.(interface {
		GetBlockChecksum(context.Context, blockcache.BlockRef, []byte) (uint32, bool, error)
	}); ok {
		return cg.GetBlockChecksum(ctx, b, p)
	}
	return 0, false, g.Origin.GetBlock(ctx, b, p)
}

// AsksPeersFirst implements blockcache.PeersFirst.
func (g *PeerGetter) AsksPeersFirst() {}

// fromPeers reads block b into p from the first of its peers that holds
// it (ok), with the block's flight marked meanwhile as asking peers.
func (g *PeerGetter) fromPeers(ctx context.Context, b blockcache.BlockRef, p []byte) (crc uint32, ok bool) {
	done := blockcache.AskingPeers(ctx)
	defer done()
	ws := g.Peers.order(readKey(b.Object.Path, b.Object.Version, b.Offset()))
	for _, w := range ws[:min(len(ws), peersAsked)] {
		s := &Source{pool: g.Peers}
		crc, err := s.readPeer(ctx, w, b, p)
		if !notHeld(err) {
			s.judge(ctx, w, err) // a peer that is down is left out until it is back
		}
		if err == nil {
			g.Peers.cfg.Metrics.PeerFetched(len(p))
			return crc, true
		}
		klog.V(4).InfoS("Peer does not hold the block", "peer", w.url, "path", b.Object.Path, "block", b.Index, "err", err)
	}
	return 0, false
}

// readPeer reads block b into p from peer w, from its cache only
// (PeerHeader); the caller marks b's flight as asking peers meanwhile.
func (s *Source) readPeer(ctx context.Context, w *worker, b blockcache.BlockRef, p []byte) (uint32, error) {
	return s.read(withPeer(ctx), w, b.Object.Path, b.Object.Version, p, b.Offset(), nil)
}
