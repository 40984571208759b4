package cacheserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// Source reads a dataset through the cache workers: listings, stats and
// bytes. It implements source.Source, so a mount's block cache reads from
// it as from any origin, and it is the one retry policy of the hop from
// the client to the workers (see the package doc): do not wrap it in
// source.WithRetry.
type Source struct {
	pool     *Pool
	id       string
	Fallback source.Source
	batches  batcher
	first    firstReads
}

var _ source.Source = (*Source)(nil)

var errNoWorkers = errors.New("no cache worker is known or up")

// WorkersID is the source ID of a Dataset read through its workers alone
// (the file system's name in /proc/mounts).
func WorkersID(dataset string) string { return "workers://" + dataset }

// NewSource returns a Source over pool. id names the dataset in local cache
// keys; use the origin's ID when known so the local disk cache is shared
// with origin mode. fallback (nil: none) is the origin, read when no worker
// can answer; it keeps its own retry policy (source.WithRetry).
func NewSource(pool *Pool, id string, fallback source.Source) *Source {
	s := &Source{pool: pool, id: id, Fallback: fallback}
	s.batches.s = s
	return s
}

// ID implements source.Source.
func (s *Source) ID() string { return s.id }

// answered reports whether err is a worker's definite answer rather than
// a failure of that worker.
func answered(err error) bool {
	return errors.Is(err, source.ErrNotFound) || errors.Is(err, source.ErrVersionChanged) ||
		errors.Is(err, source.ErrOutOfRange) || errors.Is(err, source.ErrPermission) ||
		errors.Is(err, source.ErrInvalid)
}

// originTrouble reports whether a live worker said its origin failed or
// was too slow (502, 504): asking the next worker would read the origin
// again, so the round goes on to the fallback or waits for the next one.
func originTrouble(err error) bool {
	var we *workerError
	return errors.As(err, &we) && (we.code == http.StatusBadGateway || we.code == http.StatusGatewayTimeout)
}

// busy reports whether a live worker had too many requests in flight
// (429): the next worker would have to fetch the block from the origin,
// so the round waits for the next one instead.
func busy(err error) bool {
	var we *workerError
	return errors.As(err, &we) && we.code == http.StatusTooManyRequests
}

// try asks the workers ws (in HRW order) and reports how many it used.
type try func(ctx context.Context, ws []*worker) (used int, err error)

// do runs rounds until one succeeds or answers, or the budget (ctx's
// deadline, else PoolConfig.Budget) is spent: each round asks the workers
// that are up in HRW order of key, then the fallback; rounds are spaced by
// a jittered backoff.
func (s *Source) do(ctx context.Context, op, key string, ask try, fallback func(context.Context) error) error {
	ctx, cancel := s.pool.policy.Bound(ctx)
	defer cancel()
	var last error
	for round := 0; ; round++ {
		if round > 0 {
			t := time.NewTimer(s.pool.policy.Backoff(round))
			select {
			case <-ctx.Done():
				t.Stop()
				return s.stopped(ctx, op, key, last)
			case <-t.C:
			}
		}
		ws := s.pool.order(key)
		for i := 0; i < len(ws); {
			used, err := ask(ctx, ws[i:])
			if err == nil || answered(err) {
				return err
			}
			last = err
			if ctx.Err() != nil {
				return s.stopped(ctx, op, key, last)
			}
			if originTrouble(err) || busy(err) {
				break
			}
			i += used
		}
		if s.Fallback != nil {
			err := fallback(ctx)
			if err == nil || answered(err) {
				return err
			}
			last = err
		}
		if ctx.Err() != nil {
			return s.stopped(ctx, op, key, last)
		}
		if last == nil {
			last = errNoWorkers
		}
	}
}

// stopped is the error of a call whose context ended: the caller gave up,
// or the budget is spent (logged with the last cause).
func (s *Source) stopped(ctx context.Context, op, key string, last error) error {
	path, _, _ := strings.Cut(key, "\x00")
	if last == nil {
		last = errNoWorkers
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		klog.InfoS("Cache workers could not answer within the read budget", "op", op, "path", path, "err", last)
	}
	return fmt.Errorf("%s %q through the cache workers: %w (last error: %w)", op, path, ctx.Err(), last)
}

// judge records what an attempt at w says about w's health.
func (s *Source) judge(actx context.Context, w *worker, err error) {
	switch {
	case err == nil:
		s.pool.markOK(w)
	case answered(err) || originTrouble(err) || busy(err) || actx.Err() != nil:
		// A definite answer, a live worker whose origin failed or that is
		// busy, or an attempt the caller ended (gave up, or another
		// worker won).
	case errors.Is(err, errSilent):
		s.pool.markFailed(w, "silent", err)
	case errors.Is(err, errDeadline):
		s.pool.markFailed(w, "slow", err)
	default:
		s.pool.markFailed(w, "error", err)
	}
}

// single asks only the first worker.
func (s *Source) single(fn func(ctx context.Context, w *worker) error) try {
	return func(ctx context.Context, ws []*worker) (int, error) {
		err := fn(ctx, ws[0])
		s.judge(ctx, ws[0], err)
		return 1, err
	}
}

// List implements source.Source.
func (s *Source) List(ctx context.Context, dir string) ([]source.Entry, error) {
	var out []source.Entry
	err := s.do(ctx, "list", dir+"\x00list", s.single(func(ctx context.Context, w *worker) error {
		var js []entryJSON
		if err := s.getJSON(ctx, w, "list", url.Values{"path": {dir}}, &js); err != nil {
			return err
		}
		out = make([]source.Entry, len(js))
		for i, j := range js {
			out[i] = fromJSON(j)
		}
		return nil
	}), func(ctx context.Context) (err error) { out, err = s.Fallback.List(ctx, dir); return err })
	return out, err
}

// Stat implements source.Source.
func (s *Source) Stat(ctx context.Context, p string) (source.Entry, error) {
	var out source.Entry
	err := s.do(ctx, "stat", p+"\x00stat", s.single(func(ctx context.Context, w *worker) error {
		var j entryJSON
		if err := s.getJSON(ctx, w, "stat", url.Values{"path": {p}}, &j); err != nil {
			return err
		}
		out = fromJSON(j)
		return nil
	}), func(ctx context.Context) (err error) { out, err = s.Fallback.Stat(ctx, p); return err })
	return out, err
}

// ReadAt implements source.Source. The HRW key is (path, version, offset):
// every client reading the same block asks the same worker, so the origin
// is read once per block across the cluster.
func (s *Source) ReadAt(ctx context.Context, p, version string, buf []byte, off int64) error {
	_, err := s.ReadAtChecksum(ctx, p, version, buf, off)
	return err
}

var _ source.ChecksumReader = (*Source)(nil)

// ReadAtChecksum implements source.ChecksumReader: ReadAt, returning the
// CRC-32C the worker sent and this process checked (computed here when the
// origin fallback answered).
func (s *Source) ReadAtChecksum(ctx context.Context, p, version string, buf []byte, off int64) (uint32, error) {
	s.first.note(p)
	key := readKey(p, version, off)
	if off == 0 && len(buf) <= MaxBatchObject && source.IsReadahead(ctx) {
		if crc, ok := s.batches.batched(ctx, key, p, version, buf); ok {
			return crc, nil
		}
	}
	return s.readKeyed(ctx, key, p, version, buf, off)
}

var _ blockcache.BlockRangeReader = (*Source)(nil)

// ReadBlockRange implements blockcache.BlockRangeReader: the len(buf)
// bytes at inOff of the block at blockOff, asked of the block's worker
// (the HRW key is the block's), which answers them from its cache or from
// its fetch of the block as soon as they have arrived.
func (s *Source) ReadBlockRange(ctx context.Context, p, version string, buf []byte, blockOff, inOff int64) error {
	s.first.note(p)
	_, err := s.readKeyed(ctx, readKey(p, version, blockOff), p, version, buf, blockOff+inOff)
	return err
}

// readKey is the HRW key of the block of object p, version, at off: every
// client asks the same worker for it, and a worker its peers in that order.
func readKey(p, version string, off int64) string {
	return p + "\x00" + version + "\x00" + strconv.FormatInt(off, 10)
}

// readKeyed reads buf at off of the worker that HRW orders first for key.
func (s *Source) readKeyed(ctx context.Context, key, p, version string, buf []byte, off int64) (uint32, error) {
	var crc uint32
	err := s.do(ctx, "read", key, func(ctx context.Context, ws []*worker) (int, error) {
		used, c, err := s.readHedged(ctx, ws, p, version, buf, off)
		crc = c
		return used, err
	}, func(ctx context.Context) error {
		err := s.Fallback.ReadAt(ctx, p, version, buf, off)
		if err == nil {
			crc = blockcache.Checksum(buf)
		}
		return err
	})
	return crc, err
}

type readResult struct {
	w   *worker
	crc uint32
	err error
}

// readHedged reads from ws[0], and also from ws[1] when ws[0] shows no sign
// of life within the hedge delay and the budget allows a hedge.
func (s *Source) readHedged(ctx context.Context, ws []*worker, p, version string, buf []byte, off int64) (int, uint32, error) {
	primary := ws[0]
	if len(ws) < 2 || s.pool.cfg.HedgeRate < 0 {
		crc, err := s.read(ctx, primary, p, version, buf, off, nil)
		s.judge(ctx, primary, err)
		return 1, crc, err
	}
	s.pool.earnHedge()
	pctx, pcancel := context.WithCancelCause(ctx)
	defer pcancel(nil)
	var signed atomic.Bool
	done := make(chan readResult, 2)
	go func() {
		crc, err := s.read(pctx, primary, p, version, buf, off, func() { signed.Store(true) })
		done <- readResult{primary, crc, err}
	}()
	timer := time.NewTimer(s.pool.hedgeDelay())
	defer timer.Stop()
	select {
	case r := <-done:
		s.judge(pctx, primary, r.err)
		return 1, r.crc, r.err
	case <-timer.C:
	}
	if signed.Load() || primary.aliveWithin(s.pool.hedgeDelay()) || !s.pool.takeHedge() {
		r := <-done
		s.judge(pctx, primary, r.err)
		return 1, r.crc, r.err
	}
	second := ws[1]
	hbuf := make([]byte, len(buf))
	hctx, hcancel := context.WithCancelCause(ctx)
	defer hcancel(nil)
	go func() {
		crc, err := s.read(hctx, second, p, version, hbuf, off, nil)
		done <- readResult{second, crc, err}
	}()
	var first error
	primaryRunning := true
	for pending := 2; pending > 0; pending-- {
		r := <-done
		if r.w == primary {
			primaryRunning = false
		}
		if r.err == nil && r.w == primary {
			hcancel(errLostRace)
			s.pool.markOK(primary)
			s.pool.cfg.Metrics.Hedged(false)
			return 2, r.crc, nil
		}
		if r.err == nil {
			pcancel(errLostRace)
			if primaryRunning {
				<-done // the primary no longer writes to buf
			}
			copy(buf, hbuf)
			s.pool.markOK(second)
			s.pool.cfg.Metrics.Hedged(true)
			if !signed.Load() {
				s.pool.strike(primary)
			}
			return 2, r.crc, nil
		}
		if r.w == primary {
			s.judge(pctx, primary, r.err)
		} else {
			s.judge(hctx, second, r.err)
		}
		if first == nil {
			first = r.err
		}
		if answered(r.err) {
			pcancel(errLostRace)
			hcancel(errLostRace)
			if primaryRunning {
				<-done
			}
			return 2, 0, r.err
		}
	}
	s.pool.cfg.Metrics.Hedged(false)
	return 2, 0, first
}

// read fills buf from one worker and returns the CRC-32C it sent, checked.
func (s *Source) read(ctx context.Context, w *worker, p, version string, buf []byte, off int64, onFirst func()) (uint32, error) {
	q := url.Values{"path": {p}, "version": {version}, "off": {strconv.FormatInt(off, 10)}, "len": {strconv.Itoa(len(buf))}}
	resp, err := s.pool.get(ctx, w, "read", q, s.pool.attemptTimeout(int64(len(buf))), onFirst)
	if err != nil {
		return 0, err
	}
	defer resp.done()
	if resp.ContentLength != int64(len(buf)) {
		return 0, fmt.Errorf("worker %s sent %d bytes, want %d", w.url, resp.ContentLength, len(buf))
	}
	want, err := strconv.ParseUint(resp.Header.Get(ChecksumHeader), 16, 32)
	if err != nil {
		return 0, fmt.Errorf("worker %s sent no valid %s header", w.url, ChecksumHeader)
	}
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return 0, resp.fail(fmt.Errorf("reading from worker %s: %w", w.url, err))
	}
	if got := blockcache.Checksum(buf); got != uint32(want) {
		return 0, fmt.Errorf("worker %s: checksum mismatch", w.url)
	}
	return uint32(want), nil
}

func (s *Source) getJSON(ctx context.Context, w *worker, op string, q url.Values, v any) error {
	resp, err := s.pool.get(ctx, w, op, q, s.pool.cfg.Timeout, nil)
	if err != nil {
		return err
	}
	defer resp.done()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(v); err != nil {
		return resp.fail(fmt.Errorf("worker %s: bad %s answer: %w", w.url, op, err))
	}
	return nil
}

func fromJSON(j entryJSON) source.Entry {
	e := source.Entry{Name: j.Name, IsDir: j.IsDir, Size: j.Size, Version: j.Version}
	if j.ModTime != 0 {
		e.ModTime = time.Unix(0, j.ModTime)
	}
	return e
}

// readReason reads a short error body.
func readReason(resp *http.Response) string {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return strings.TrimSpace(string(b))
}
