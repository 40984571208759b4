package source

import (
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Slots bounds requests in flight and hands a slot that frees to a waiting
// demand request before any readahead, so a reader's block is not queued
// behind every readahead (the block cache's fetches use it as it is).
// Toward an origin (WithRetry) the limit also adapts, with additive
// increase and multiplicative decrease (AIMD): every answer the origin
// gives without throttling raises it by 1/limit (about one per round of
// requests), and a throttling answer (ErrThrottled: S3 SlowDown, HTTP 429
// or 503) halves it, at most once per round: a throttled request that
// started before the last decrease does not decrease it again.
//
// Lock order: Slots.mu is a leaf.
type Slots struct {
	mu       sync.Mutex
	limit    float64
	max      float64
	inFlight int
	cut      time.Time // last decrease
	demand   []chan struct{}
	ahead    []chan struct{}
	id       string
}

// NewSlots returns n slots (a fixed limit unless used by WithRetry).
func NewSlots(n int) *Slots { return newLimiter("", n) }

func newLimiter(id string, maxInFlight int) *Slots {
	return &Slots{limit: float64(maxInFlight), max: float64(maxInFlight), id: id}
}

// Acquire waits for a slot; it returns ctx's error if ctx ends first.
func (l *Slots) Acquire(ctx context.Context, readahead bool) error {
	return l.AcquirePromotable(ctx, readahead, nil)
}

// AcquirePromotable is Acquire for a readahead request that a reader may
// come to wait for: once promote closes, the request waits as demand.
func (l *Slots) AcquirePromotable(ctx context.Context, readahead bool, promote <-chan struct{}) error {
	l.mu.Lock()
	if l.roomLocked() && len(l.demand) == 0 && (!readahead || len(l.ahead) == 0) {
		l.inFlight++
		l.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	if readahead {
		l.ahead = append(l.ahead, ch)
	} else {
		l.demand = append(l.demand, ch)
		promote = nil
	}
	l.mu.Unlock()
	for {
		select {
		case <-ch:
			return nil
		case <-promote:
			promote = nil
			l.mu.Lock()
			if dropWaiter(&l.ahead, ch) {
				l.demand = append(l.demand, ch)
				l.wakeLocked()
			}
			l.mu.Unlock()
			continue
		case <-ctx.Done():
		}
		break
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !dropWaiter(&l.demand, ch) && !dropWaiter(&l.ahead, ch) {
		// Granted while giving up: hand the slot on.
		l.inFlight--
		l.wakeLocked()
	}
	return ctx.Err()
}

// Waiting reports how many demand and readahead requests wait for a slot.
func (l *Slots) Waiting() (demand, readahead int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.demand), len(l.ahead)
}

// Release frees a slot.
func (l *Slots) Release() { l.release(time.Time{}, false, false) }

// release frees a slot taken at start; throttled says the origin asked us
// to slow down, answered that it gave any other answer.
func (l *Slots) release(start time.Time, throttled, answered bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight--
	switch {
	case throttled && start.After(l.cut):
		l.limit = max(1, l.limit/2)
		l.cut = time.Now()
		klog.V(2).InfoS("Origin throttles; fewer requests in flight", "source", l.id, "limit", int(l.limit))
	case answered && !throttled:
		l.limit = min(l.max, l.limit+1/l.limit)
	}
	l.wakeLocked()
}

// Limit is the current limit (for tests and metrics).
func (l *Slots) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.limit)
}

func (l *Slots) roomLocked() bool { return float64(l.inFlight) < l.limit }

func (l *Slots) wakeLocked() {
	for l.roomLocked() {
		var q *[]chan struct{}
		switch {
		case len(l.demand) > 0:
			q = &l.demand
		case len(l.ahead) > 0:
			q = &l.ahead
		default:
			return
		}
		ch := (*q)[0]
		*q = (*q)[1:]
		l.inFlight++
		close(ch)
	}
}

func dropWaiter(q *[]chan struct{}, ch chan struct{}) bool {
	for i, c := range *q {
		if c == ch {
			*q = append((*q)[:i], (*q)[i+1:]...)
			return true
		}
	}
	return false
}
