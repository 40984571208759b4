package blockcache

import "sync"

// promotions let a reader that joins a readahead fetch of its block make
// that fetch a demand fetch: it then waits for its slot as demand (ahead
// of every other readahead) and tells the tier below it is no readahead.
// An entry lives while its block's fetch does.
//
// Lock order: promotions.mu is a leaf.
type promotions struct {
	mu sync.Mutex
	m  map[string]*promotion
}

// promotion closes ch once a reader waits for the block.
type promotion struct {
	ch     chan struct{}
	closed bool
}

func newPromotions() *promotions { return &promotions{m: map[string]*promotion{}} }

func (p *promotions) entryLocked(key string) *promotion {
	pr := p.m[key]
	if pr == nil {
		pr = &promotion{ch: make(chan struct{})}
		p.m[key] = pr
	}
	return pr
}

// enter is called by a block's fetch when it starts; it returns the
// channel that closes when a reader waits for the block.
func (p *promotions) enter(key string) *promotion {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.entryLocked(key)
}

// demand says a reader waits for key's block.
func (p *promotions) demand(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr := p.entryLocked(key); !pr.closed {
		pr.closed = true
		close(pr.ch)
	}
}

// promoted reports whether a reader waits for pr's block.
func (p *promotions) promoted(pr *promotion) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return pr.closed
}

// leave ends a fetch's entry.
func (p *promotions) leave(key string, pr *promotion) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m[key] == pr {
		delete(p.m, key)
	}
}
