package cacheserver

import (
	"slices"
	"time"
)

// Hedging: a block request whose worker shows no sign of life (an interim
// 102 or the answer) within the set's recent p95 time to first sign, on
// this request or any other of the process's requests to it, is also sent
// to the next worker in HRW order, and the first good answer wins. A worker
// that answers other requests is busy, not paused: hedging its requests
// would make the next worker fetch their blocks from the origin again.
// Workers answer or send a 102 within milliseconds however long the block
// takes them (a slow origin shows as 102s, not as silence), so a hedge is
// sent for a worker that is paused, overloaded or cut off — not for one
// that is fetching, which would read the origin twice. Hedges are bounded
// by a token bucket that every block request fills by HedgeRate, and a
// worker that loses slowStrikes hedges within strikeWindow without a sign
// of life is marked failed (slow).

const (
	// Bounds of the hedge delay, and its value before enough samples. The
	// floor keeps scheduling hiccups of a loaded 2-core machine from
	// sending hedges, each of which may make a second worker read the
	// origin: with a 100 ms floor the faults benchmark's baseline read the
	// origin 1.06–1.14 × the dataset while builds ran beside it (1.00 on
	// an idle machine).
	minHedgeDelay     = 300 * time.Millisecond
	maxHedgeDelay     = 2 * time.Second
	defaultHedgeDelay = 500 * time.Millisecond
	minSignSamples    = 20
	// maxHedgeTokens bounds a burst of hedges.
	maxHedgeTokens = 10
	strikeWindow   = 10 * time.Second
)

// latencies is a ring of recent times to a worker's first sign of life,
// with its p95 recomputed every 32 samples.
type latencies struct {
	ring  [512]time.Duration
	n     int // samples held, ≤ len(ring)
	next  int
	added int
	p95   time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.ring[l.next] = d
	l.next = (l.next + 1) % len(l.ring)
	l.n = min(l.n+1, len(l.ring))
	l.added++
	if l.added%32 == 0 || l.n == minSignSamples {
		s := slices.Clone(l.ring[:l.n])
		slices.Sort(s)
		l.p95 = s[min(len(s)-1, len(s)*95/100)]
	}
}

// recordSign adds one attempt's time to first sign of life.
func (p *Pool) recordSign(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signs.add(d)
}

// hedgeDelay is how long a block request waits for a sign of life before
// it is hedged.
func (p *Pool) hedgeDelay() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.signs.n < minSignSamples {
		return defaultHedgeDelay
	}
	return min(max(p.signs.p95, minHedgeDelay), maxHedgeDelay)
}

// aliveWithin reports whether any request to w showed a sign of life
// within d.
func (w *worker) aliveWithin(d time.Duration) bool {
	return time.Since(time.Unix(0, w.lastSign.Load())) < d
}

// earnHedge credits one block request to the hedge budget.
func (p *Pool) earnHedge() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hedges = min(p.hedges+p.cfg.HedgeRate, maxHedgeTokens)
}

// takeHedge spends one hedge from the budget, if there is one.
func (p *Pool) takeHedge() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hedges < 1 {
		return false
	}
	p.hedges--
	return true
}

// strike records that w lost a hedge without a sign of life; the third
// strike within strikeWindow marks it failed.
func (p *Pool) strike(w *worker) {
	now := time.Now()
	p.mu.Lock()
	w.strikeAt = append(w.strikeAt, now)
	w.strikeAt = slices.DeleteFunc(w.strikeAt, func(t time.Time) bool { return now.Sub(t) > strikeWindow })
	slow := len(w.strikeAt) >= slowStrikes
	if slow {
		w.strikeAt = nil
	}
	p.mu.Unlock()
	if slow {
		p.markFailed(w, "slow", errSlow)
	}
}
