package cacheserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// batchWindow is how long a readahead read of a small object waits for
// others bound for the same worker before its batch is sent. Only
// readahead waits: no reader is waiting for these bytes yet.
const batchWindow = 2 * time.Millisecond

// batcher gathers readahead reads of whole small objects into one batch
// request per worker (batch.go). A read that its batch cannot answer — the
// request failed, or the object had an error — goes the way of every read
// (Source.do), which retries, fails over and gives the definite answer.
//
// Lock order: batcher.mu, then pending.mu.
type batcher struct {
	s    *Source
	mu   sync.Mutex
	open map[*worker]*outgoing // batches still taking reads
}

// outgoing is one batch request in the making.
type outgoing struct {
	w     *worker
	reads []*pending
}

// pending is one read of a batch. The sender fills buf only while the
// reader waits (under mu): a reader that gives up first marks it
// abandoned, and its buffer is not touched after that. A read whose
// object had an error in the batch, or whose batch failed, is not read.
type pending struct {
	p, version string
	buf        []byte
	done       chan struct{}

	mu        sync.Mutex
	abandoned bool
	read      bool // buf holds the object's bytes, crc their CRC-32C
	crc       uint32
}

// batched reads buf (the first len(buf) bytes of p) through a batch to
// key's worker; ok is false when the read must go the usual way.
func (b *batcher) batched(ctx context.Context, key, p, version string, buf []byte) (uint32, bool) {
	ws := b.s.pool.order(key)
	if len(ws) == 0 || ws[0].noBatch.Load() {
		return 0, false
	}
	r := &pending{p: p, version: version, buf: buf, done: make(chan struct{})}
	b.add(ws[0], r)
	select {
	case <-r.done:
	case <-ctx.Done():
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.done:
		return r.crc, r.read
	default:
		r.abandoned = true
		return 0, false
	}
}

// add puts r in w's open batch, starting one (sent after batchWindow) or
// sending it now when it is full.
func (b *batcher) add(w *worker, r *pending) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open == nil {
		b.open = map[*worker]*outgoing{}
	}
	o := b.open[w]
	if o == nil {
		o = &outgoing{w: w}
		b.open[w] = o
		time.AfterFunc(batchWindow, func() { b.close(o) })
	}
	o.reads = append(o.reads, r)
	if len(o.reads) == MaxBatch {
		delete(b.open, w)
		go b.send(o)
	}
}

// close sends o when it is still open.
func (b *batcher) close(o *outgoing) {
	b.mu.Lock()
	open := b.open[o.w] == o
	if open {
		delete(b.open, o.w)
	}
	b.mu.Unlock()
	if open {
		b.send(o)
	}
}

// send asks o's worker for o's reads and hands each its bytes or error.
func (b *batcher) send(o *outgoing) {
	q := url.Values{}
	var total int64
	for _, r := range o.reads {
		q.Add("path", r.p)
		q.Add("version", r.version)
		q.Add("len", strconv.Itoa(len(r.buf)))
		total += int64(len(r.buf))
	}
	ctx := source.WithReadahead(context.Background())
	err := b.receive(ctx, o, q, total)
	b.s.judge(ctx, o.w, err)
	if errors.Is(err, source.ErrNotFound) || errors.Is(err, source.ErrInvalid) {
		// A worker that does not know batch reads (an older version) or
		// refuses this one: its reads go one by one from now on.
		o.w.noBatch.Store(true)
	}
	for _, r := range o.reads {
		close(r.done)
	}
	if err != nil {
		klog.V(4).InfoS("Batch read failed; its reads go one by one", "worker", o.w.url, "objects", len(o.reads), "err", err)
	}
}

// receive sends the batch and reads its frames into the reads' buffers.
func (b *batcher) receive(ctx context.Context, o *outgoing, q url.Values, total int64) error {
	resp, err := b.s.pool.get(ctx, o.w, "batch", q, b.s.pool.attemptTimeout(total), nil)
	if err != nil {
		return err
	}
	defer resp.done()
	if ct := resp.Header.Get("Content-Type"); ct != batchContentType {
		return fmt.Errorf("worker %s: batch answer of type %q", o.w.url, ct)
	}
	var hdr [frameHeader]byte
	for i, r := range o.reads {
		if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
			return resp.fail(fmt.Errorf("reading frame %d of a batch from worker %s: %w", i, o.w.url, err))
		}
		status := int(binary.BigEndian.Uint16(hdr[0:]))
		crc := binary.BigEndian.Uint32(hdr[4:])
		n := binary.BigEndian.Uint64(hdr[8:])
		if err := b.frame(resp.Body, r, status, crc, n); err != nil {
			return resp.fail(fmt.Errorf("frame %d of a batch from worker %s: %w", i, o.w.url, err))
		}
	}
	return nil
}

// frame reads one frame's payload: into r's buffer when r still waits
// and the object was read, else aside.
func (b *batcher) frame(body io.Reader, r *pending, status int, crc uint32, n uint64) error {
	if status != http.StatusOK {
		if n > 64<<10 {
			return fmt.Errorf("an error reason of %d bytes", n)
		}
		// The read goes the usual way, which gets the definite answer.
		_, err := io.CopyN(io.Discard, body, int64(n))
		return err
	}
	if n != uint64(len(r.buf)) {
		return fmt.Errorf("%d bytes of %s, want %d", n, r.p, len(r.buf))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.abandoned {
		_, err := io.CopyN(io.Discard, body, int64(n))
		return err
	}
	if _, err := io.ReadFull(body, r.buf); err != nil {
		return err
	}
	if blockcache.Checksum(r.buf) != crc {
		return fmt.Errorf("checksum mismatch of %s", r.p)
	}
	r.crc, r.read = crc, true
	return nil
}
