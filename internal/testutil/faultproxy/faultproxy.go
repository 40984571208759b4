// Package faultproxy is an HTTP reverse proxy that injects faults, for tests
// and benchmarks of clients of S3 and HTTP origins.
//
// Per request it draws one random number (seeded, under a mutex): with
// probability FailRate it answers 503 with an S3 "SlowDown" error body, with
// probability ResetRate it forwards the request but cuts the connection after
// part of the response body (or right before the headers when there is no
// body), and otherwise it forwards the response intact. With probability
// DelayRate (a second draw, made only when DelayRate > 0) a request is held
// for Delay before any of that: nothing, not even an interim 1xx response,
// comes back before Delay. All response bodies share one token bucket of
// BandwidthBytesPerSec. SetDown(true) makes the proxy drop every connection
// without answering, like a crashed server; SetBlackhole(true) makes it
// accept requests and answer nothing, like a peer whose traffic is dropped
// while its TCP connections stay open (see blackhole.go). SetFaults changes
// the rates of a running proxy.
//
// Interim 1xx responses of the upstream (a cache worker's "102
// Processing") are forwarded as they come, like any other response bytes.
//
// The Host header is passed through unchanged, so AWS Signature V4 requests
// signed for the proxy's address are valid at the upstream server.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Config selects the faults. The zero value forwards everything unchanged.
type Config struct {
	// FailRate is the fraction of requests answered with 503 SlowDown.
	FailRate float64
	// ResetRate is the fraction of requests whose connection is cut after
	// part of the response body.
	ResetRate float64
	// DelayRate is the fraction of requests held for Delay before they are
	// forwarded (or failed).
	DelayRate float64
	Delay     time.Duration
	// BandwidthBytesPerSec limits the response bytes of all connections
	// together (0: unlimited).
	BandwidthBytesPerSec int64
	// Seed makes the fault sequence reproducible (for a given order of
	// requests).
	Seed int64
	// Listen is the proxy's address (default "127.0.0.1:0": loopback, a
	// free port); pods reach a proxy on the node's address.
	Listen string
}

// Proxy is a running fault-injecting reverse proxy on 127.0.0.1.
type Proxy struct {
	url       string
	srv       *http.Server
	transport *http.Transport
	rp        *httputil.ReverseProxy
	bucket    *tokenBucket // nil: unlimited

	mu  sync.Mutex // guards cfg's rates and rnd
	cfg Config
	rnd *rand.Rand

	requests  atomic.Int64
	bodyBytes atomic.Int64
	down      atomic.Bool
	hole      gate
}

// New starts a proxy in front of upstream (e.g. "http://127.0.0.1:9000").
func New(upstream string, cfg Config) (*Proxy, error) {
	u, err := url.Parse(upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: upstream %q: want http(s)://host[:port]", upstream)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{
		cfg: cfg,
		url: "http://" + ln.Addr().String(),
		rnd: rand.New(rand.NewPCG(uint64(cfg.Seed), 0x5eed)),
		transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		},
	}
	if cfg.BandwidthBytesPerSec > 0 {
		p.bucket = newTokenBucket(cfg.BandwidthBytesPerSec)
	}
	p.rp = httputil.NewSingleHostReverseProxy(u)
	p.rp.Transport = p.transport
	p.rp.FlushInterval = -1 // flush every write: partial bodies reach the client
	p.rp.ErrorLog = log.New(io.Discard, "", 0)
	p.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serve),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (cfg Config) validate() error {
	if cfg.FailRate < 0 || cfg.ResetRate < 0 || cfg.FailRate+cfg.ResetRate > 1 {
		return fmt.Errorf("faultproxy: FailRate %v and ResetRate %v must be ≥ 0 and sum to ≤ 1",
			cfg.FailRate, cfg.ResetRate)
	}
	if cfg.DelayRate < 0 || cfg.DelayRate > 1 || cfg.Delay < 0 {
		return fmt.Errorf("faultproxy: DelayRate %v must be in [0, 1] and Delay %v ≥ 0", cfg.DelayRate, cfg.Delay)
	}
	return nil
}

// SetFaults replaces the fault rates and the delay of a running proxy with
// cfg's FailRate, ResetRate, DelayRate and Delay (for requests that arrive
// from now on); cfg's bandwidth and seed are ignored.
func (p *Proxy) SetFaults(cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg.FailRate, p.cfg.ResetRate = cfg.FailRate, cfg.ResetRate
	p.cfg.DelayRate, p.cfg.Delay = cfg.DelayRate, cfg.Delay
	return nil
}

// URL is the proxy's base URL, "http://127.0.0.1:PORT".
func (p *Proxy) URL() string { return p.url }

// Close stops the proxy and closes all its connections.
func (p *Proxy) Close() error {
	err := p.srv.Close()
	p.transport.CloseIdleConnections()
	return err
}

// Requests is the number of requests received (including refused ones).
func (p *Proxy) Requests() int64 { return p.requests.Load() }

// BodyBytes is the number of response body bytes sent to clients.
func (p *Proxy) BodyBytes() int64 { return p.bodyBytes.Load() }

// SetDown makes the proxy drop (true) or serve (false) requests.
func (p *Proxy) SetDown(down bool) { p.down.Store(down) }

type fault int

const (
	none fault = iota
	fail
	reset
)

// draw decides the fate of one request; frac is where a reset cuts the
// body (a fraction of its length), delay how long it is held first. The
// delay is drawn only when DelayRate > 0, so a seed gives the same
// fail/reset sequence as before delays existed.
func (p *Proxy) draw() (f fault, frac float64, delay time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rnd.Float64()
	frac = p.rnd.Float64()
	if p.cfg.DelayRate > 0 && p.rnd.Float64() < p.cfg.DelayRate {
		delay = p.cfg.Delay
	}
	switch {
	case r < p.cfg.FailRate:
		return fail, frac, delay
	case r < p.cfg.FailRate+p.cfg.ResetRate:
		return reset, frac, delay
	}
	return none, frac, delay
}

const slowDownBody = `<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>faultproxy</RequestId></Error>`

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	p.requests.Add(1)
	if p.down.Load() {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
			return
		}
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	// A request whose client gives up while it is held gets no answer at
	// all: the handler aborts rather than return (which would send a 200).
	if p.hole.wait(r.Context()) != nil {
		panic(http.ErrAbortHandler) // blackholed until the client gave up
	}
	f, frac, delay := p.draw()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			panic(http.ErrAbortHandler)
		}
	}
	cw := &countingWriter{ResponseWriter: w, p: p, ctx: r.Context(), limit: -1}
	switch f {
	case fail:
		cw.Header().Set("Content-Type", "application/xml")
		cw.Header().Set("Content-Length", strconv.Itoa(len(slowDownBody)))
		cw.Header().Set("Retry-After", "0")
		cw.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(cw, slowDownBody)
		return
	case reset:
		cw.resetFrac = frac
		cw.limit = 0 // set from Content-Length in WriteHeader
	}
	p.rp.ServeHTTP(cw, r)
	if f == reset {
		// The body was shorter than the cut point (or absent): still cut.
		panic(http.ErrAbortHandler)
	}
}

// countingWriter counts body bytes, paces them through the token bucket,
// holds everything while the proxy is blackholed and, for a reset, aborts
// the connection after limit bytes.
type countingWriter struct {
	http.ResponseWriter
	p         *Proxy
	ctx       context.Context
	limit     int64 // ≥ 0: abort after this many body bytes
	resetFrac float64
	written   int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.p.hole.wait(w.ctx) != nil {
		return // the client is gone; the body's writes fail
	}
	if code < 200 { // an interim response: forward it, the final one follows
		w.ResponseWriter.WriteHeader(code)
		return
	}
	if w.limit >= 0 {
		cl, err := strconv.ParseInt(w.Header().Get("Content-Length"), 10, 64)
		if err != nil || cl <= 0 {
			// Nothing to cut in the middle of: drop the connection before
			// the headers.
			panic(http.ErrAbortHandler)
		}
		w.limit = int64(w.resetFrac * float64(cl)) // < cl
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	total := 0
	for len(b) > 0 {
		chunk := b
		if len(chunk) > 32<<10 {
			chunk = chunk[:32<<10]
		}
		abort := false
		if w.limit >= 0 && w.written+int64(len(chunk)) >= w.limit {
			chunk = chunk[:w.limit-w.written]
			abort = true
		}
		if err := w.p.hole.wait(w.ctx); err != nil {
			return total, err
		}
		if w.p.bucket != nil && len(chunk) > 0 {
			if err := w.p.bucket.wait(w.ctx, len(chunk)); err != nil {
				return total, err
			}
		}
		// Counted before the write, so a client that has read the whole
		// body never sees a count short of it.
		w.p.bodyBytes.Add(int64(len(chunk)))
		n, err := w.ResponseWriter.Write(chunk)
		w.p.bodyBytes.Add(int64(n - len(chunk)))
		total += n
		w.written += int64(n)
		if abort {
			_ = http.NewResponseController(w.ResponseWriter).Flush()
			panic(http.ErrAbortHandler)
		}
		if err != nil {
			return total, err
		}
		b = b[n:]
	}
	return total, nil
}

// Flush lets the reverse proxy flush through the wrapper.
func (w *countingWriter) Flush() {
	if w.p.hole.wait(w.ctx) != nil {
		return
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap gives http.ResponseController access to the underlying writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// tokenBucket is a token bucket shared by all connections. A caller reserves
// tokens (the balance may go negative) and sleeps until its reservation is
// covered, so concurrent writers together get the configured rate.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // bytes per second
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(bytesPerSec int64) *tokenBucket {
	burst := float64(bytesPerSec) / 20 // 50 ms worth
	if burst < 32<<10 {
		burst = 32 << 10
	}
	return &tokenBucket{rate: float64(bytesPerSec), burst: burst, tokens: burst, last: time.Now()}
}

func (b *tokenBucket) wait(ctx context.Context, n int) error {
	b.mu.Lock()
	now := time.Now()
	b.tokens += now.Sub(b.last).Seconds() * b.rate
	if b.tokens > b.burst {
		b.tokens = b.burst
	}
	b.last = now
	b.tokens -= float64(n)
	var d time.Duration
	if b.tokens < 0 {
		d = time.Duration(-b.tokens / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return errors.Join(errors.New("faultproxy: bandwidth wait cancelled"), ctx.Err())
	}
}
