package blockcache

import (
	"context"
	"math/rand/v2"
	"sync"
)

// flights runs exactly one fetch per block at a time, however many
// readers ask for it. Each waiter of a flight gets its own reference to
// the fetched buffer: the count of waiters is final once the flight
// finishes (under mu), so no waiter can see a buffer that the memory tier
// evicted and the pool handed out again. A waiter that gives up before
// the end takes itself off the count; after it, it releases its share.
//
// A flight started for readahead is promoted when a reader joins it: it
// then waits for its slot as demand (ahead of every other readahead) and
// tells the tier below it is no readahead.
//
// A tier below that streams (source.WithProgress) reports how many leading
// bytes of the flight's buffer have arrived; a reader that needs only some
// of the block (waitFor) takes its own reference as soon as its bytes are
// there and leaves the count of waiters. The buffer is the flight's from
// setBuf until dropBuf or finish, and its reference keeps it alive
// meanwhile.
//
// A cache worker's flights ask its peers before the origin (askpeers.go);
// a peer joins such a flight only in one direction of an order of ranks.
//
// Lock order: flights.mu is a leaf.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
	// rank orders this cache among its peers (askpeers.go); asksPeers
	// is whether its flights start asking peers.
	rank      uint64
	asksPeers bool
}

type flight struct {
	done     chan struct{}
	promote  chan struct{} // closed once a reader waits
	promoted bool
	waiters  int
	finished bool
	asking   bool // the tier below may still ask peers (askpeers.go)
	buf      *buffer
	crc      uint32
	err      error
	filled   int           // leading bytes of buf that arrived
	partial  int           // waiters waiting for part of the block
	progress chan struct{} // closed when filled grows and partial > 0
}

func newFlights(asksPeers bool) *flights {
	return &flights{m: map[string]*flight{}, rank: rand.Uint64(), asksPeers: asksPeers}
}

// join counts the caller as a waiter of key's flight, starting it with run
// in a goroutine when none is in flight (start). The caller must call wait
// or waitFor.
func (fs *flights) join(key string, readahead bool, run func(*flight)) (f *flight, start bool) {
	fs.mu.Lock()
	f = fs.m[key]
	start = f == nil
	if start {
		f = &flight{done: make(chan struct{}), promote: make(chan struct{}), progress: make(chan struct{}), asking: fs.asksPeers}
		fs.m[key] = f
	}
	f.waiters++
	if !readahead && !f.promoted {
		f.promoted = true
		close(f.promote)
	}
	fs.mu.Unlock()
	if start {
		go run(f)
	}
	return f, start
}

// joinExisting is join without starting a flight, for a peer of rank
// asker (ranked false: of no rank): nil when key has none, or when its
// flight is asking peers and the asker does not rank below this cache.
func (fs *flights) joinExisting(key string, readahead bool, asker uint64, ranked bool) *flight {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := fs.m[key]
	if f == nil || (f.asking && !(ranked && asker < fs.rank)) {
		return nil
	}
	f.waiters++
	if !readahead && !f.promoted {
		f.promoted = true
		close(f.promote)
	}
	return f
}

// has reports whether key has a flight.
func (fs *flights) has(key string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.m[key] != nil
}

// isPromoted reports whether a reader waits for f.
func (fs *flights) isPromoted(f *flight) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return f.promoted
}

// finish ends key's flight f: every waiter gets a reference to buf. The
// flight's own reference stays with the caller.
func (fs *flights) finish(key string, f *flight, buf *buffer, crc uint32, err error) {
	fs.mu.Lock()
	if fs.m[key] == f {
		delete(fs.m, key)
	}
	f.finished = true
	f.buf, f.crc, f.err = buf, crc, err
	if err == nil {
		buf.refs.Add(int32(f.waiters))
	}
	fs.mu.Unlock()
	close(f.done)
}

// wait returns f's result with a reference the caller releases, or ctx's
// error when ctx ends first.
func (fs *flights) wait(ctx context.Context, f *flight) (*buffer, uint32, error) {
	select {
	case <-f.done:
		return f.buf, f.crc, f.err
	case <-ctx.Done():
	}
	fs.mu.Lock()
	if !f.finished {
		f.waiters--
		fs.mu.Unlock()
		return nil, 0, ctx.Err()
	}
	fs.mu.Unlock()
	return f.buf, f.crc, f.err // it finished meanwhile: the result is ours
}

// setBuf makes buf, which the flight's goroutine holds a reference to and
// fills from the tier below, the flight's buffer before it finishes.
func (fs *flights) setBuf(f *flight, buf *buffer) {
	fs.mu.Lock()
	f.buf, f.filled = buf, 0
	fs.mu.Unlock()
}

// dropBuf takes the buffer back before its reference is released (the
// fetch failed): no waiter can take a reference to it after this.
func (fs *flights) dropBuf(f *flight) {
	fs.mu.Lock()
	f.buf, f.filled = nil, 0
	fs.mu.Unlock()
}

// progressed records that the first n bytes of f's buffer arrived, waking
// the waiters for part of the block.
func (fs *flights) progressed(f *flight, n int) {
	fs.mu.Lock()
	if f.buf != nil && n > f.filled {
		f.filled = n
		if f.partial > 0 {
			close(f.progress)
			f.progress = make(chan struct{})
		}
	}
	fs.mu.Unlock()
}

// waitFor is wait for a caller that needs only the first end bytes of the
// block: it returns, with a reference the caller releases, as soon as they
// have arrived, or the flight's result.
func (fs *flights) waitFor(ctx context.Context, f *flight, end int) (*buffer, uint32, error) {
	fs.mu.Lock()
	f.partial++
	for {
		if f.finished {
			f.partial--
			fs.mu.Unlock()
			return f.buf, f.crc, f.err // finish counted this waiter
		}
		if f.buf != nil && f.filled >= end {
			f.partial--
			f.waiters--
			f.buf.refs.Add(1)
			buf := f.buf
			fs.mu.Unlock()
			return buf, 0, nil
		}
		progress := f.progress
		fs.mu.Unlock()
		select {
		case <-progress:
		case <-f.done:
		case <-ctx.Done():
		}
		fs.mu.Lock()
		if ctx.Err() != nil && !f.finished {
			f.partial--
			f.waiters--
			fs.mu.Unlock()
			return nil, 0, ctx.Err()
		}
	}
}
