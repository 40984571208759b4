package cacheserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// Why an attempt at one worker ended early (context causes).
var (
	errSilent   = errors.New("the worker sent nothing for too long")
	errDeadline = errors.New("the worker did not answer within the attempt's deadline")
	errLostRace = errors.New("another worker answered first")
	errSlow     = errors.New("the worker lost hedged requests without a sign of life")
)

// watchdog ends an attempt whose worker falls silent: every sign of life
// (an interim 102, the response header, a body read) resets it. The worker
// is silent when neither this request nor any other of this process's
// requests to it showed a sign of life within the silence: a worker that
// answers other requests is busy (a burst's backlog, a starved CPU), not
// gone, and such an attempt is bounded by its deadline instead — failing
// the worker would send its blocks to workers that fetch them again.
type watchdog struct {
	start   time.Time
	last    atomic.Int64  // UnixNano of the last sign of life
	worker  *atomic.Int64 // the same, over all requests to the worker
	first   atomic.Int64  // UnixNano of the first, 0 before it
	silence time.Duration
	timer   *time.Timer
	cancel  context.CancelCauseFunc
	onFirst func() // nil or called once, at the first sign of life
}

func watchSilence(ctx context.Context, w *worker, silence time.Duration, onFirst func()) (context.Context, *watchdog) {
	ctx, cancel := context.WithCancelCause(ctx)
	wd := &watchdog{start: time.Now(), worker: &w.lastSign, silence: silence, cancel: cancel, onFirst: onFirst}
	wd.last.Store(wd.start.UnixNano())
	wd.timer = time.AfterFunc(silence, wd.check)
	return ctx, wd
}

func (wd *watchdog) check() {
	last := max(wd.last.Load(), wd.worker.Load())
	idle := time.Since(time.Unix(0, last))
	if idle >= wd.silence {
		wd.cancel(errSilent)
		return
	}
	wd.timer.Reset(wd.silence - idle)
}

func (wd *watchdog) alive() {
	now := time.Now().UnixNano()
	wd.last.Store(now)
	wd.worker.Store(now)
	if wd.first.CompareAndSwap(0, now) && wd.onFirst != nil {
		wd.onFirst()
	}
}

// signAfter is the time from the start to the first sign of life.
func (wd *watchdog) signAfter() (time.Duration, bool) {
	f := wd.first.Load()
	return time.Duration(f - wd.start.UnixNano()), f != 0
}

func (wd *watchdog) stop() {
	wd.timer.Stop()
	wd.cancel(nil)
}

// reply is a 200 answer of one worker; done releases the attempt.
type reply struct {
	*http.Response
	ctx context.Context
	wd  *watchdog
	w   *worker
	p   *Pool
	// release stops the watchdog and the attempt's timeout.
	release func()
}

// fail explains err with the reason the attempt ended, when it ended.
func (r *reply) fail(err error) error { return attemptErr(r.ctx, r.w, err) }

func (r *reply) done() {
	r.Body.Close()
	if d, ok := r.wd.signAfter(); ok {
		r.p.recordSign(d)
	}
	r.release()
}

func attemptErr(ctx context.Context, w *worker, err error) error {
	if ctx.Err() == nil {
		return err
	}
	cause := context.Cause(ctx)
	if errors.Is(err, cause) {
		return err
	}
	return fmt.Errorf("worker %s: %w (%v)", w.url, cause, err)
}

// progressBody counts every body read as a sign of life.
type progressBody struct {
	io.ReadCloser
	wd *watchdog
}

func (b *progressBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.wd.alive()
	}
	return n, err
}

// attemptTimeout is the deadline of one attempt that moves n bytes.
func (p *Pool) attemptTimeout(n int64) time.Duration {
	return p.cfg.Timeout + time.Duration(float64(n)/float64(p.cfg.MinRate)*float64(time.Second))
}

// get sends one request to one worker within timeout (and ctx), telling
// the worker that deadline. A 200 answer is returned for the caller to
// read and release (reply.done); any other answer becomes an error (see
// errorFromStatus). onFirst, when set, is called at the first sign of life.
func (p *Pool) get(ctx context.Context, w *worker, op string, q url.Values, timeout time.Duration, onFirst func()) (*reply, error) {
	tok, err := p.readToken()
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	tctx, cancelTimeout := context.WithTimeoutCause(ctx, timeout, errDeadline)
	wctx, wd := watchSilence(tctx, w, p.cfg.Silence, onFirst)
	release := func() { wd.stop(); cancelTimeout() }
	trace := &httptrace.ClientTrace{
		Got1xxResponse:       func(int, textproto.MIMEHeader) error { wd.alive(); return nil },
		GotFirstResponseByte: wd.alive,
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(wctx, trace), http.MethodGet, p.opURL(w, op)+"?"+q.Encode(), nil)
	if err != nil {
		release()
		return nil, err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if source.IsReadahead(ctx) {
		req.Header.Set(ReadaheadHeader, "1")
	}
	if isPeer(ctx) {
		req.Header.Set(PeerHeader, "1")
		if rank, ok := blockcache.PeerRank(ctx); ok {
			req.Header.Set(PeerRankHeader, strconv.FormatUint(rank, 10))
		}
	}
	req.Header.Set(TimeoutHeader, strconv.FormatInt(timeout.Milliseconds(), 10))
	resp, err := p.client.Do(req)
	if err != nil {
		err = attemptErr(wctx, w, err)
		release()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		reason := readReason(resp)
		release()
		return nil, errorFromStatus(resp.StatusCode, reason)
	}
	resp.Body = &progressBody{ReadCloser: resp.Body, wd: wd}
	return &reply{Response: resp, ctx: wctx, wd: wd, w: w, p: p, release: release}, nil
}

// opURL is the URL of operation op of the pool's dataset at w.
func (p *Pool) opURL(w *worker, op string) string {
	return w.url + "/v1/datasets/" + url.PathEscape(p.cfg.Dataset) + "/" + op
}
