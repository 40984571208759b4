// Package datapath builds the read stack that every serving process runs —
// `sluice mount`, a cache worker, a CSI session, the FUSE sidecar: the
// source (the origin, or the cache workers with the origin as fallback),
// the listing cache and the block cache, from one small Config. Commands
// turn their flags into a Config (internal/app); components build one
// directly.
package datapath

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/cacheserver"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/pki"
	"github.com/sluice-dev/sluice/internal/source"
)

// Config is what a serving process reads through.
type Config struct {
	// Source is the origin's URL; "" for a Dataset read through its
	// workers alone.
	Source string
	// Origin holds the origin's endpoint, region, path style and
	// credentials (URL query parameters override them).
	Origin source.Options
	// Cache configures the block cache; Open sets its Getter and Metrics.
	// Cache.FetchTimeout is the read budget.
	Cache blockcache.Config
	// MetadataTTL is how long listings are cached.
	MetadataTTL time.Duration
	// Workers, when set, reads through the cache workers.
	Workers *Workers
	// Probe bounds the wait for the source to answer at start (origins
	// that are still starting, workers scaling up from zero).
	Probe time.Duration
	// Metrics receives the data path's counters (nil: none).
	Metrics *metrics.Cache
	// Below, when set, wraps the Getter of the tier below the cache (a
	// cache worker's peers: cacheserver.PeerGetter).
	Below func(blockcache.Getter) blockcache.Getter
}

// DefaultProbe is Config.Probe's default.
const DefaultProbe = 20 * time.Second

// Workers says how to reach a Dataset's cache workers.
type Workers struct {
	// URLs is a static list (http(s)://host:port); DNS a headless Service
	// (host:port) or an SRV name, resolved every Refresh.
	URLs    []string
	DNS     string
	Refresh time.Duration
	// Dataset is the dataset's name at the workers; TokenFile holds the
	// token presented to them.
	Dataset   string
	TokenFile string
	// Timeout caps one attempt at one worker (see internal/cacheserver).
	Timeout time.Duration
	// OriginFallback reads the origin when no worker can answer, if the
	// origin answers with this process's credentials.
	OriginFallback bool
	// CAFile is the CA bundle (PEM) the workers' certificates chain to;
	// with it, workers are reached over TLS. Insecure lets the token go
	// over plain http:// (see cacheserver.PoolConfig).
	CAFile   string
	Insecure bool
}

// WorkersAt parses a workers address: http(s):// URLs, comma-separated, or
// a headless Service's host:port (or SRV name).
func WorkersAt(addr string) Workers {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return Workers{URLs: strings.Split(addr, ",")}
	}
	return Workers{DNS: addr}
}

// Runtime is an open stack; the caller closes Cache.
type Runtime struct {
	Source   source.Source
	Listings *listcache.Cache
	Cache    *blockcache.Cache
	Metrics  *metrics.Cache
}

// OpenOrigin opens an origin URL with the origin hop's retry policy.
func OpenOrigin(raw string, opts source.Options) (source.Source, error) {
	src, err := source.Parse(raw, opts)
	if err != nil {
		return nil, err
	}
	return source.WithRetry(src, source.DefaultRetryPolicy()), nil
}

// Open opens the source, waits until it answers (bounded by cfg.Probe),
// and builds the caches. ctx bounds the workers' DNS refresh and probes.
func Open(ctx context.Context, cfg Config) (*Runtime, error) {
	var src source.Source
	var err error
	if cfg.Workers != nil {
		src, err = openWorkers(ctx, cfg)
	} else {
		src, err = OpenOrigin(cfg.Source, cfg.Origin)
	}
	if err != nil {
		return nil, err
	}
	if cfg.Probe <= 0 {
		cfg.Probe = DefaultProbe
	}
	if err := waitAnswer(ctx, src, cfg.Probe); err != nil {
		return nil, err
	}
	cc := cfg.Cache
	cc.Getter = blockcache.OriginGetter{Source: src}
	if cfg.Below != nil {
		cc.Getter = cfg.Below(cc.Getter)
	}
	cc.Metrics = cfg.Metrics
	cache, err := blockcache.New(cc)
	if err != nil {
		return nil, err
	}
	return &Runtime{Source: src, Listings: listcache.New(src, cfg.MetadataTTL), Cache: cache, Metrics: cfg.Metrics}, nil
}

// waitAnswer stats the root until it answers or probe has passed.
func waitAnswer(ctx context.Context, src source.Source, probe time.Duration) error {
	pctx, cancel := context.WithTimeout(ctx, probe)
	defer cancel()
	for {
		_, err := src.Stat(pctx, "")
		if err == nil {
			return nil
		}
		if source.IsPermanent(err) || pctx.Err() != nil {
			return fmt.Errorf("cannot read %s: %w", src.ID(), err)
		}
		select {
		case <-pctx.Done():
			return fmt.Errorf("cannot read %s: %w", src.ID(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// StartPool builds a pool of cache workers, reached over TLS with the CA
// bundle caFile when it is set (flag names it in errors), and keeps the
// set current until ctx ends.
func StartPool(ctx context.Context, pc cacheserver.PoolConfig, caFile, flag string) (*cacheserver.Pool, error) {
	if caFile != "" {
		tc, err := pki.ClientConfigFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		pc.TLS = tc
	}
	pool, err := cacheserver.NewPool(ctx, pc)
	if err != nil {
		return nil, err
	}
	go pool.Run(ctx)
	return pool, nil
}

// openWorkers builds the workers' source. The origin becomes the fallback
// when OriginFallback is set and the origin answers with this process's
// credentials; without credentials the stack reads the workers alone.
func openWorkers(ctx context.Context, cfg Config) (source.Source, error) {
	w := cfg.Workers
	pc := cacheserver.PoolConfig{URLs: w.URLs, DNS: w.DNS, Refresh: w.Refresh,
		Dataset: w.Dataset, TokenFile: w.TokenFile, Timeout: w.Timeout, Budget: cfg.Cache.FetchTimeout,
		Metrics: cfg.Metrics, Insecure: w.Insecure}
	pool, err := StartPool(ctx, pc, w.CAFile, "--workers-ca")
	if err != nil {
		return nil, err
	}
	id := cacheserver.WorkersID(w.Dataset)
	var fallback source.Source
	if cfg.Source != "" {
		if origin, err := OpenOrigin(cfg.Source, cfg.Origin); err == nil {
			id = origin.ID()
			if w.OriginFallback {
				pctx, cancel := context.WithTimeout(ctx, min(cfg.Probe, 5*time.Second))
				if _, err := origin.Stat(pctx, ""); err == nil {
					fallback = origin
				} else {
					klog.InfoS("Reading through the cache workers only: the origin does not answer with these credentials", "err", err)
				}
				cancel()
			}
		}
	}
	// The workers' Source is the client hop's one retry policy.
	return cacheserver.NewSource(pool, id, fallback), nil
}
