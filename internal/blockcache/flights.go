package blockcache

import (
	"context"
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
// Lock order: flights.mu is a leaf.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done     chan struct{}
	promote  chan struct{} // closed once a reader waits
	promoted bool
	waiters  int
	finished bool
	buf      *buffer
	crc      uint32
	err      error
}

func newFlights() *flights { return &flights{m: map[string]*flight{}} }

// join counts the caller as a waiter of key's flight, starting it with run
// in a goroutine when none is in flight. The caller must call wait.
func (fs *flights) join(key string, readahead bool, run func(*flight)) *flight {
	fs.mu.Lock()
	f := fs.m[key]
	start := f == nil
	if start {
		f = &flight{done: make(chan struct{}), promote: make(chan struct{})}
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
	return f
}

// joinExisting is join without starting a flight: nil when key has none.
func (fs *flights) joinExisting(key string, readahead bool) *flight {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := fs.m[key]
	if f == nil {
		return nil
	}
	f.waiters++
	if !readahead && !f.promoted {
		f.promoted = true
		close(f.promote)
	}
	return f
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
