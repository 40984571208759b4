package app

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/cacheserver"
	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
)

// WorkerFlags make a mount read through cache workers.
type WorkerFlags struct {
	URLs           []string
	DNS            string
	Refresh        time.Duration
	TokenFile      string
	Dataset        string
	Timeout        time.Duration
	OriginFallback bool
	// Budget bounds a listing or stat through the workers; reads are
	// bounded by the block cache's read budget (set from --read-budget).
	Budget time.Duration
}

// AddFlags registers the client-side worker flags.
func (w *WorkerFlags) AddFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&w.URLs, "workers", nil, "cache worker URLs (http://host:port,...)")
	fs.StringVar(&w.DNS, "workers-dns", "", "headless Service of the cache workers: host:port (A records) or an SRV name (_port._tcp.host)")
	fs.DurationVar(&w.Refresh, "workers-refresh", 10*time.Second, "how often --workers-dns is resolved again")
	fs.StringVar(&w.TokenFile, "worker-token-file", "", "file holding the token presented to the workers (re-read when it changes)")
	fs.StringVar(&w.Dataset, "dataset", cacheserver.DefaultDataset, "dataset name at the workers")
	fs.DurationVar(&w.Timeout, "worker-timeout", 30*time.Second, "one attempt at one worker, plus its bytes at 1 MiB/s; past it the worker is marked failed and the next one is tried (a silent worker is failed after 3 s)")
	fs.BoolVar(&w.OriginFallback, "origin-fallback", true, "with workers, read the origin when no worker can answer (needs origin credentials)")
}

func (w *WorkerFlags) enabled() bool { return len(w.URLs) > 0 || w.DNS != "" }

// Validate checks the flags.
func (w *WorkerFlags) Validate() error {
	if !w.enabled() {
		return nil
	}
	if w.Timeout <= 0 {
		return fmt.Errorf("--worker-timeout %s: must be positive", w.Timeout)
	}
	if w.Refresh <= 0 {
		return fmt.Errorf("--workers-refresh %s: must be positive", w.Refresh)
	}
	return nil
}

// open builds the workers' source. The origin becomes the fallback when
// --origin-fallback is set and the origin answers with this process's
// credentials; without credentials the mount reads the workers alone.
func (w *WorkerFlags) open(ctx context.Context, rawURL string, sf *SourceFlags, probe time.Duration, m *metrics.Cache) (source.Source, error) {
	pool, err := cacheserver.NewPool(ctx, cacheserver.PoolConfig{URLs: w.URLs, DNS: w.DNS, Refresh: w.Refresh,
		Dataset: w.Dataset, TokenFile: w.TokenFile, Timeout: w.Timeout, Budget: w.Budget, Metrics: m})
	if err != nil {
		return nil, err
	}
	go pool.Run(ctx)
	id := cacheserver.WorkersID(w.Dataset)
	var fallback source.Source
	if origin, err := sf.Open(rawURL); err == nil {
		id = origin.ID()
		if w.OriginFallback {
			pctx, cancel := context.WithTimeout(ctx, min(probe, 5*time.Second))
			if _, err := origin.Stat(pctx, ""); err == nil {
				fallback = origin
			} else {
				klog.InfoS("Reading through the cache workers only: the origin does not answer with these credentials", "err", err)
			}
			cancel()
		}
	}
	// The workers' Source is the client hop's one retry policy.
	return cacheserver.NewSource(pool, id, fallback), nil
}
