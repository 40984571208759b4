package faultproxy

import (
	"context"
	"sync"
)

// SetBlackhole turns the blackhole on or off. While it is on, the proxy
// accepts connections and requests (new or on kept-alive connections) and
// answers nothing: a new request is held before it is forwarded, and a
// request already forwarded forwards nothing further (no interim response,
// header or body byte). A held request ends when its client goes away (its
// context ends: a client timeout closes the connection) or, if the
// blackhole is turned off first, carries on as if the network had come
// back. This models a peer whose packets are dropped while the TCP
// connections to it stay open (a partition, a full conntrack table), as
// opposed to SetDown, which refuses connections like a crashed server.
func (p *Proxy) SetBlackhole(on bool) { p.hole.set(on) }

// Blackholed reports whether the blackhole is on.
func (p *Proxy) Blackholed() bool { return p.hole.on() }

// gate blocks its waiters while it is shut.
type gate struct {
	mu   sync.Mutex
	shut chan struct{} // nil: open; else closed when the gate opens again
}

func (g *gate) set(shut bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case shut && g.shut == nil:
		g.shut = make(chan struct{})
	case !shut && g.shut != nil:
		close(g.shut)
		g.shut = nil
	}
}

func (g *gate) on() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.shut != nil
}

// wait returns nil once the gate is open, or ctx's error if ctx ends
// first.
func (g *gate) wait(ctx context.Context) error {
	g.mu.Lock()
	shut := g.shut
	g.mu.Unlock()
	if shut == nil {
		return nil
	}
	select {
	case <-shut:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
