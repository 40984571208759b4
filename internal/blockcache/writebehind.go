package blockcache

import (
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// writeBehind writes fetched blocks to the disk tier off the read path: a
// fetch hands its block over and returns to its readers at once. Writes
// are buffered by default, so a file read cold is in the page cache when
// it is next opened with passthrough; with direct set they go with
// O_DIRECT (Config.DirectWrites: no page-cache allocation on the cold
// path, but the next read of those blocks comes from the disk). When the
// queue is full the disk copy is dropped:
// the block stays in the memory tier and is fetched again only if it is
// evicted before it is read. A full queue whose disk still makes progress
// holds the fetch until there is room, at most maxPace (a slower disk
// than network paces the reader, as the page cache must hold the file for
// passthrough); a stuck disk never blocks or fails a read.
// Writes queued or in progress are counted per object, so an open that
// wants a fully cached file (passthrough) can wait for them (flush).
//
// Lock order: writeBehind.mu is a leaf; no disk write runs under it.
type writeBehind struct {
	write   func(b BlockRef, data []byte, crc uint32, direct bool) error // the disk tier's write
	direct  bool
	stuck   time.Duration // stuckAfter, shorter in tests
	pace    time.Duration // maxPace, shorter in tests
	jobs    chan diskJob
	wg      sync.WaitGroup // writers
	senders sync.WaitGroup // submits that may still send on jobs

	mu       sync.Mutex
	closed   bool
	pending  map[string]*objectWrites // object id → its unwritten blocks
	queued   map[string]diskJob       // block key → a block not yet on disk
	dropped  int64
	lastDone time.Time // when a write last finished
}

// diskJob is a queued write; it holds a reference to buf until it is
// written or dropped.
type diskJob struct {
	b   BlockRef
	buf *buffer
	crc uint32
}

// objectWrites counts an object's queued or running writes; done closes
// when the count drops to zero.
type objectWrites struct {
	n    int
	done chan struct{}
}

// Write-behind sizing: the queue holds at most writeBehindBytes of blocks
// (at least two), written by writeBehindWriters goroutines; a disk that
// finished no write for stuckAfter is taken as stuck, and a full queue
// holds a fetch at most maxPace. Both are long: a worker's disk copies are
// the cluster's cache, and under a burst of 64 clients on 2 cores a 1 s
// bound dropped copies that the origin then had to send again.
const (
	writeBehindBytes   = 64 << 20
	writeBehindWriters = 2
	stuckAfter         = 10 * time.Second
	maxPace            = 5 * time.Second
)

// newWriteBehind starts the writers of a queue of queued blocks.
func newWriteBehind(write func(BlockRef, []byte, uint32, bool) error, queued int, direct bool) *writeBehind {
	w := &writeBehind{write: write, direct: direct, jobs: make(chan diskJob, max(2, queued)), pending: map[string]*objectWrites{},
		queued: map[string]diskJob{}, lastDone: time.Now(), stuck: stuckAfter, pace: maxPace} // a new disk is taken as working
	for range writeBehindWriters {
		w.wg.Add(1)
		go w.run()
	}
	return w
}

// submit queues a block's disk write. When the queue is full it waits for
// room while the disk makes progress (a write finished within stuckAfter),
// at most stuckAfter; it drops the copy and reports false when the disk is
// stuck or the queue closed.
func (w *writeBehind) submit(b BlockRef, buf *buffer, crc uint32) bool {
	id := b.Object.id()
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false
	}
	ow := w.pending[id]
	if ow == nil {
		ow = &objectWrites{done: make(chan struct{})}
		w.pending[id] = ow
	}
	ow.n++
	job := diskJob{b: b, buf: buf.ref(), crc: crc}
	w.queued[b.Key()] = job
	progressing := time.Since(w.lastDone) < w.stuck
	w.senders.Add(1)
	w.mu.Unlock()
	defer w.senders.Done()
	select {
	case w.jobs <- job:
		return true
	default:
	}
	if progressing {
		t := time.NewTimer(w.pace)
		defer t.Stop()
		select {
		case w.jobs <- job:
			return true
		case <-t.C:
		}
	}
	w.mu.Lock()
	w.dropped++
	n := w.dropped
	w.mu.Unlock()
	if n == 1 || n%100 == 0 {
		klog.InfoS("Disk copies dropped: the disk tier writes slower than blocks arrive; an evicted block is fetched again",
			"dropped", n, "stuck", !progressing)
	}
	w.finished(job, false)
	return false
}

// lookup returns a block that is queued for the disk, with a reference
// the caller releases: evicted from memory before its write, it is still
// served from here, not fetched again.
func (w *writeBehind) lookup(key string) (*buffer, uint32, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	j, ok := w.queued[key]
	if !ok {
		return nil, 0, false
	}
	return j.buf.ref(), j.crc, true
}

// has reports whether a block is queued for the disk.
func (w *writeBehind) has(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.queued[key]
	return ok
}

func (w *writeBehind) run() {
	defer w.wg.Done()
	for j := range w.jobs {
		// Small blocks (heap buffers: small objects) are written through
		// the page cache, so that they are served from it when opened
		// again; per byte they cost the same, per file far less than a
		// read from the disk.
		if err := w.write(j.b, j.buf.data, j.crc, w.direct && j.buf.pool != nil); err != nil {
			klog.V(2).InfoS("Disk tier write failed", "path", j.b.Object.Path, "block", j.b.Index, "err", err)
		}
		w.finished(j, true)
	}
}

// finished ends one of j's object's pending writes; wrote says it reached
// the disk (a dropped copy is no sign of the disk's progress).
func (w *writeBehind) finished(j diskJob, wrote bool) {
	id := j.b.Object.id()
	defer j.buf.release() // after the unlock: the pool's lock is a leaf
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.queued, j.b.Key())
	if wrote {
		w.lastDone = time.Now()
	}
	if ow := w.pending[id]; ow != nil {
		if ow.n--; ow.n == 0 {
			close(ow.done)
			delete(w.pending, id)
		}
	}
}

// flush waits up to timeout for obj's queued writes; it reports whether
// none is left.
func (w *writeBehind) flush(obj ObjectRef, timeout time.Duration) bool {
	w.mu.Lock()
	ow := w.pending[obj.id()]
	w.mu.Unlock()
	if ow == nil {
		return true
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ow.done:
		return true
	case <-t.C:
		return false
	}
}

// drops is the number of disk copies dropped because the queue was full.
func (w *writeBehind) drops() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dropped
}

// close writes what is queued and stops the writers.
func (w *writeBehind) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.mu.Unlock()
	w.senders.Wait()
	close(w.jobs)
	w.wg.Wait()
}
