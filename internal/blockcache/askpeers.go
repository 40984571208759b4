package blockcache

import "context"

// A cache worker's tier below asks its peers for a block before the
// origin, and a peer answers from its cache or from its own flight of the
// block (Held). Two workers asking each other for one block would each
// wait for the other's flight until the deadline. So a flight that may
// still ask peers (from its start, when the Getter is PeersFirst, until
// the done of AskingPeers) is joined by a peer only if the peer's cache
// ranks below this one. Each cache draws its rank at random when it is
// made; a peer sends its rank with its read (PeerRank, WithPeerRank).
// A waits-for edge into a flight that is asking peers goes up the ranks,
// and a flight that reads the origin waits for no other: no cycle. Of
// workers asking each other for a block, the highest ranked goes on to
// its next peer or the origin and the others wait for its fetch, so the
// origin sends the block once.

// PeersFirst is implemented by a Getter that asks other caches for a
// block before the origin (a cache worker's cacheserver.PeerGetter). A
// flight of a cache over one is asking peers from its start until the
// Getter calls the done of AskingPeers.
type PeersFirst interface {
	Getter
	AsksPeersFirst()
}

func isPeersFirst(g Getter) bool {
	_, ok := g.(PeersFirst)
	return ok
}

type flightKey struct{}

type flightRef struct {
	fs *flights
	f  *flight
}

// withFlight returns the tier below's ctx for flight f.
func (fs *flights) withFlight(ctx context.Context, f *flight) context.Context {
	return context.WithValue(ctx, flightKey{}, flightRef{fs: fs, f: f})
}

// AskingPeers marks the flight whose fetch runs under ctx (a Getter's
// ctx) as asking other caches for its block until done is called; after
// done it reads the origin or ends. A Getter calls it around its reads
// from peers. Under a ctx of no flight it does nothing.
func AskingPeers(ctx context.Context) (done func()) {
	r, ok := ctx.Value(flightKey{}).(flightRef)
	if !ok {
		return func() {}
	}
	r.fs.setAsking(r.f, true)
	return func() { r.fs.setAsking(r.f, false) }
}

// PeerRank is the rank of the cache whose flight's fetch runs under ctx
// (ok is false under a ctx of no flight). A Getter sends it with each
// read from a peer.
func PeerRank(ctx context.Context) (rank uint64, ok bool) {
	r, ok := ctx.Value(flightKey{}).(flightRef)
	if !ok {
		return 0, false
	}
	return r.fs.rank, true
}

type askerKey struct{}

// WithPeerRank returns ctx for Held on behalf of a peer whose PeerRank
// is rank.
func WithPeerRank(ctx context.Context, rank uint64) context.Context {
	return context.WithValue(ctx, askerKey{}, rank)
}

// askerRank is the rank of WithPeerRank (ok is false without one).
func askerRank(ctx context.Context) (rank uint64, ok bool) {
	rank, ok = ctx.Value(askerKey{}).(uint64)
	return rank, ok
}

func (fs *flights) setAsking(f *flight, asking bool) {
	fs.mu.Lock()
	f.asking = asking
	fs.mu.Unlock()
}
