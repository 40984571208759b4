package bench

import "time"

// idleTick is how often the origin's bytes are sampled during a burst.
const idleTick = 100 * time.Millisecond

// idleMeter samples the bytes the origin has sent, every idleTick, while a
// burst runs.
type idleMeter struct {
	stop   chan struct{}
	done   chan struct{}
	deltas []int64 // bytes sent in each tick
}

func startIdleMeter(sent func() int64) *idleMeter {
	m := &idleMeter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(idleTick)
		defer t.Stop()
		last := sent()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				now := sent()
				m.deltas = append(m.deltas, now-last)
				last = now
			}
		}
	}()
	return m
}

// fraction stops the meter and returns the share of the origin's active
// window it was idle (originIdle).
func (m *idleMeter) fraction(bandwidth int64) float64 {
	close(m.stop)
	<-m.done
	return originIdle(m.deltas, bandwidth)
}

// originIdle is the share of ticks between the origin's first and last
// byte in which it sent less than a tenth of what its bandwidth allows
// (without a cap: a tenth of its busiest tick): the dips of an origin left
// waiting while readers finish one file before they ask for the next.
func originIdle(deltas []int64, bandwidth int64) float64 {
	first, last := -1, -1
	var busiest int64
	for i, d := range deltas {
		if d > 0 {
			if first < 0 {
				first = i
			}
			last = i
		}
		busiest = max(busiest, d)
	}
	if first < 0 {
		return 0
	}
	limit := busiest / 10
	if bandwidth > 0 {
		limit = int64(float64(bandwidth) * idleTick.Seconds() / 10)
	}
	idle := 0
	for _, d := range deltas[first : last+1] {
		if d < limit {
			idle++
		}
	}
	return float64(idle) / float64(last-first+1)
}
