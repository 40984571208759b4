package cacheserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
)

// PoolConfig configures the client's view of the worker set.
type PoolConfig struct {
	// URLs is a static worker list (https://host:port, or http:// with
	// Insecure or without a token).
	URLs []string
	// DNS is a headless Service name resolved periodically: "host:port"
	// (A/AAAA records, one worker per address) or an SRV name starting
	// with "_" (e.g. _http._tcp.workers.ns.svc.cluster.local).
	DNS string
	// Refresh is the DNS re-resolution period (default 10s).
	Refresh time.Duration
	// Dataset is the worker-side dataset name (default "default").
	Dataset string
	// TokenFile holds the bearer token; it is re-read when it changes
	// (projected service-account tokens rotate).
	TokenFile string
	// Timeout caps one attempt at one worker; a read gets its bytes at
	// MinRate on top (default 30 s). See the package doc.
	Timeout time.Duration
	// Silence is how long a worker may send nothing during a request before
	// it is marked failed (default 3 s, at least 1 s: workers send an
	// interim response every 500 ms while they work).
	Silence time.Duration
	// MinRate is the rate a read must sustain, bytes/s (default 1 MiB/s).
	MinRate int64
	// Budget bounds a call whose context has no deadline (default 60 s).
	Budget time.Duration
	// HedgeRate bounds the extra requests that hedging sends, as a
	// fraction of all block requests (default 0.05; negative: no hedging).
	HedgeRate float64
	// Resolver is used for DNS (default net.DefaultResolver).
	Resolver *net.Resolver
	// Metrics receives hedge and failure counts (nil: none).
	Metrics *metrics.Cache
	// TLS verifies the workers (see pki.ClientConfig); the workers found
	// through DNS are then reached at https://, each verified against the
	// DNS name (a headless Service's host, or an SRV record's target).
	TLS *tls.Config
	// Exclude is a host (a worker's own pod IP) left out of the set: a
	// worker's pool of its peers.
	Exclude string
	// Insecure lets the token go to workers over plain http://; without
	// it, a pool with a token refuses any worker that is not https://.
	Insecure bool
}

// Pool is the worker set with health state, shared by all requests.
//
// Lock order: Pool.mu is a leaf; no request or probe runs under it.
type Pool struct {
	cfg    PoolConfig
	client *http.Client
	policy source.RetryPolicy // backoff between rounds and the budget

	mu      sync.Mutex
	workers []*worker
	token   string
	tokenAt time.Time
	probing bool // Run's prober brings failed workers back
	signs   latencies
	hedges  float64 // hedge tokens
}

type worker struct {
	url  string
	seed uint64
	// lastSign is the UnixNano of the last sign of life on any of this
	// process's requests to the worker (see watchdog).
	lastSign atomic.Int64
	// noBatch: the worker refused a batch read (batch_client.go).
	noBatch atomic.Bool
	// Guarded by Pool.mu.
	down      bool
	retryAt   time.Time // next probe (or, without a prober, next use)
	failures  int
	strikeAt  []time.Time // hedges lost without a sign of life (recent)
	inProbe   bool
	downSince time.Time
}

// Backoff bounds of a failed worker's probes.
const (
	minBackoff = 250 * time.Millisecond
	maxBackoff = 5 * time.Second
	// slowStrikes lost hedges within strikeWindow mark a worker failed.
	slowStrikes = 3
	// probeTimeout bounds one /readyz probe.
	probeTimeout = time.Second
)

// NewPool builds the pool and resolves DNS once (an empty answer is not an
// error: workers may be scaling up).
func NewPool(ctx context.Context, cfg PoolConfig) (*Pool, error) {
	if len(cfg.URLs) == 0 && cfg.DNS == "" {
		return nil, errors.New("cache workers: give --workers or --workers-dns")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 10 * time.Second
	}
	if cfg.Dataset == "" {
		cfg.Dataset = DefaultDataset
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Silence <= 0 {
		cfg.Silence = 3 * time.Second
	}
	// Workers send an interim response every interimEvery while they work.
	cfg.Silence = max(cfg.Silence, 2*interimEvery)
	if cfg.MinRate <= 0 {
		cfg.MinRate = source.DefaultMinRate
	}
	if cfg.Budget <= 0 {
		cfg.Budget = source.DefaultBudget
	}
	if cfg.HedgeRate == 0 {
		cfg.HedgeRate = 0.05
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	for _, u := range cfg.URLs {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return nil, fmt.Errorf("--workers: %q is not an http(s)://host:port URL", u)
		}
		if pu.Scheme == "https" && cfg.TLS == nil {
			return nil, fmt.Errorf("--workers: %q is https: give --workers-ca (the CA bundle the workers' certificates chain to)", u)
		}
		if pu.Scheme == "http" && cfg.TokenFile != "" && !cfg.Insecure {
			return nil, fmt.Errorf("--workers: %q is plain http, and the token is sent only over TLS: use https:// with --workers-ca, or --insecure-workers on a trusted network", u)
		}
	}
	if cfg.DNS != "" && cfg.TLS == nil && cfg.TokenFile != "" && !cfg.Insecure {
		return nil, fmt.Errorf("--workers-dns %q: the token is sent only over TLS: give --workers-ca, or --insecure-workers on a trusted network", cfg.DNS)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.TLS != nil {
		t.TLSClientConfig = cfg.TLS.Clone()
		if host, _, err := net.SplitHostPort(cfg.DNS); err == nil && !strings.HasPrefix(cfg.DNS, "_") && t.TLSClientConfig.ServerName == "" {
			// Workers found by A records are dialed by address and
			// verified against the Service's name.
			t.TLSClientConfig.ServerName = host
		}
	}
	t.MaxIdleConnsPerHost = 64
	// A worker that drops packets fails the dial here, not after the
	// request's whole deadline.
	t.DialContext = (&net.Dialer{Timeout: cfg.Silence, KeepAlive: 15 * time.Second}).DialContext
	// HTTP/1.1 with a pool of connections per worker. Workers also speak
	// HTTP/2 without TLS, but one multiplexed connection moved blocks more
	// slowly here: `sluice demo --bandwidth 10G` took 13.8 s with h2c
	// against 8.4 s with HTTP/1.1 (same build otherwise).
	t.Protocols = new(http.Protocols)
	t.Protocols.SetHTTP1(true)
	policy := source.DefaultRetryPolicy()
	policy.Budget, policy.MaxDelay = cfg.Budget, time.Second
	p := &Pool{cfg: cfg, client: &http.Client{Transport: t}, policy: policy, hedges: 1}
	if _, err := p.readToken(); err != nil {
		return nil, err
	}
	p.setWorkers(cfg.URLs)
	if cfg.DNS != "" {
		if err := p.resolve(ctx); err != nil {
			klog.InfoS("Resolving cache workers failed; will retry", "dns", cfg.DNS, "err", err)
		}
	}
	return p, nil
}

// Run re-resolves DNS and probes failed workers until ctx is done. Without
// Run, a failed worker is tried again by requests once its backoff ends.
func (p *Pool) Run(ctx context.Context) {
	p.mu.Lock()
	p.probing = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.probing = false
		p.mu.Unlock()
	}()
	var dns <-chan time.Time
	if p.cfg.DNS != "" {
		t := time.NewTicker(p.cfg.Refresh)
		defer t.Stop()
		dns = t.C
	}
	probe := time.NewTicker(minBackoff)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-dns:
			if err := p.resolve(ctx); err != nil {
				klog.V(2).InfoS("Resolving cache workers failed", "dns", p.cfg.DNS, "err", err)
			}
		case <-probe.C:
			p.probeDue(ctx)
		}
	}
}

func (p *Pool) resolve(ctx context.Context) error {
	var urls []string
	if strings.HasPrefix(p.cfg.DNS, "_") {
		_, srvs, err := p.cfg.Resolver.LookupSRV(ctx, "", "", p.cfg.DNS)
		if err != nil {
			return err
		}
		for _, s := range srvs {
			urls = append(urls, p.scheme()+net.JoinHostPort(strings.TrimSuffix(s.Target, "."), strconv.Itoa(int(s.Port))))
		}
	} else {
		host, port, err := net.SplitHostPort(p.cfg.DNS)
		if err != nil {
			return fmt.Errorf("--workers-dns %q: want host:port or an SRV name: %w", p.cfg.DNS, err)
		}
		addrs, err := p.cfg.Resolver.LookupHost(ctx, host)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			urls = append(urls, p.scheme()+net.JoinHostPort(a, port))
		}
	}
	p.setWorkers(append(urls, p.cfg.URLs...))
	return nil
}

// excluded reports whether worker URL u is PoolConfig.Exclude.
func (p *Pool) excluded(u string) bool {
	if p.cfg.Exclude == "" {
		return false
	}
	pu, err := url.Parse(u)
	return err == nil && pu.Hostname() == p.cfg.Exclude
}

// scheme is how workers found through DNS are reached.
func (p *Pool) scheme() string {
	if p.cfg.TLS != nil {
		return "https://"
	}
	return "http://"
}

// setWorkers replaces the set, keeping the health of known workers.
func (p *Pool) setWorkers(urls []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := map[string]*worker{}
	for _, w := range p.workers {
		old[w.url] = w
	}
	var next []*worker
	seen := map[string]bool{}
	for _, u := range urls {
		u = strings.TrimSuffix(u, "/")
		if seen[u] || p.excluded(u) {
			continue
		}
		seen[u] = true
		if w := old[u]; w != nil {
			next = append(next, w)
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(u))
		next = append(next, &worker{url: u, seed: h.Sum64()})
	}
	if len(next) != len(p.workers) {
		klog.V(2).InfoS("Cache worker set changed", "workers", len(next))
	}
	p.workers = next
}

// Workers returns the current worker URLs.
func (p *Pool) Workers() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, w := range p.workers {
		out = append(out, w.url)
	}
	return out
}

// order returns the workers a request for key may use, in rendezvous
// (HRW) order: highest score first, only workers that are up. When none
// is up it returns those whose backoff has ended without a prober to
// vouch for them, so a client without Run still finds its way back.
func (p *Pool) order(key string) []*worker {
	kh := fnv.New64a()
	kh.Write([]byte(key))
	k := kh.Sum64()
	now := time.Now()
	p.mu.Lock()
	var ws []*worker
	for _, w := range p.workers {
		if !w.down || (!p.probing && now.After(w.retryAt)) {
			ws = append(ws, w)
		}
	}
	p.mu.Unlock()
	slices.SortFunc(ws, func(a, b *worker) int {
		sa, sb := mix(a.seed^k), mix(b.seed^k)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return strings.Compare(a.url, b.url)
	})
	return ws
}

// mix is a 64-bit finalizer (splitmix64), so scores of one key over
// different workers are independent.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// markFailed takes w out of the set until a probe (or, without a prober,
// its backoff) brings it back. reason is a metric label: silent, slow or
// error.
func (p *Pool) markFailed(w *worker, reason string, err error) {
	p.mu.Lock()
	w.failures++
	d := min(minBackoff<<min(w.failures-1, 10), maxBackoff)
	w.retryAt = time.Now().Add(d)
	wasUp := !w.down
	w.down, w.strikeAt = true, nil
	if wasUp {
		w.downSince = time.Now()
	}
	p.mu.Unlock()
	p.cfg.Metrics.WorkerFailed(reason)
	if wasUp {
		klog.InfoS("Cache worker failed; reading through the others", "worker", w.url, "reason", reason, "err", err)
	} else {
		klog.V(2).InfoS("Cache worker still failing", "worker", w.url, "backoff", d, "err", err)
	}
}

// markOK records a good answer from w.
func (p *Pool) markOK(w *worker) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.upLocked(w)
}

func (p *Pool) upLocked(w *worker) {
	if w.down {
		klog.InfoS("Cache worker is back", "worker", w.url, "after", time.Since(w.downSince).Round(time.Millisecond))
	}
	w.down, w.failures, w.retryAt = false, 0, time.Time{}
}

// probeDue probes every failed worker whose backoff has ended, each in
// its own goroutine and one probe per worker at a time.
func (p *Pool) probeDue(ctx context.Context) {
	now := time.Now()
	p.mu.Lock()
	var due []*worker
	for _, w := range p.workers {
		if w.down && !w.inProbe && now.After(w.retryAt) {
			w.inProbe = true
			due = append(due, w)
		}
	}
	p.mu.Unlock()
	for _, w := range due {
		go func() {
			err := p.probe(ctx, w)
			p.mu.Lock()
			w.inProbe = false
			if err == nil {
				p.upLocked(w)
			} else {
				w.failures++
				w.retryAt = time.Now().Add(min(minBackoff<<min(w.failures-1, 10), maxBackoff))
			}
			p.mu.Unlock()
			if err != nil {
				klog.V(3).InfoS("Cache worker probe failed", "worker", w.url, "err", err)
			}
		}()
	}
}

// probe asks w's /readyz, within probeTimeout.
func (p *Pool) probe(ctx context.Context, w *worker) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.url+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	reason := readReason(resp)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz: %s: %s", resp.Status, reason)
	}
	return nil
}

// readToken returns the bearer token, re-reading the file when it changed.
func (p *Pool) readToken() (string, error) {
	if p.cfg.TokenFile == "" {
		return "", nil
	}
	fi, err := os.Stat(p.cfg.TokenFile)
	if err != nil {
		return "", fmt.Errorf("--worker-token-file: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.token != "" && fi.ModTime().Equal(p.tokenAt) {
		return p.token, nil
	}
	b, err := os.ReadFile(p.cfg.TokenFile)
	if err != nil {
		return "", fmt.Errorf("--worker-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		// A file being rewritten in place reads empty for a moment:
		// keep the last token and read it again on the next request.
		if p.token != "" {
			return p.token, nil
		}
		return "", fmt.Errorf("--worker-token-file %s is empty", p.cfg.TokenFile)
	}
	p.token, p.tokenAt = tok, fi.ModTime()
	return p.token, nil
}
