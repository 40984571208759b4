package app

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/sluice-dev/sluice/internal/cacheserver"
	"github.com/sluice-dev/sluice/internal/datapath"
)

// WorkerFlags make `sluice mount` read through cache workers.
type WorkerFlags struct {
	URLs           []string
	DNS            string
	Refresh        time.Duration
	TokenFile      string
	Dataset        string
	Timeout        time.Duration
	OriginFallback bool
	TLS            TLSFlags
}

// AddFlags registers the client-side worker flags.
func (w *WorkerFlags) AddFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&w.URLs, "workers", nil, "cache worker URLs (https://host:port,...; http:// only with --insecure-workers or without a token)")
	fs.StringVar(&w.DNS, "workers-dns", "", "headless Service of the cache workers: host:port (A records) or an SRV name (_port._tcp.host)")
	fs.DurationVar(&w.Refresh, "workers-refresh", 10*time.Second, "how often --workers-dns is resolved again")
	fs.StringVar(&w.TokenFile, "worker-token-file", "", "file holding the token presented to the workers (re-read when it changes)")
	fs.StringVar(&w.Dataset, "dataset", cacheserver.DefaultDataset, "dataset name at the workers")
	fs.DurationVar(&w.Timeout, "worker-timeout", 30*time.Second, "one attempt at one worker, plus its bytes at 1 MiB/s; past it the worker is marked failed and the next one is tried (a silent worker is failed after 3 s)")
	w.TLS.AddFlags(fs, "")
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
	if err := w.TLS.Validate(w.TokenFile, append([]string{w.DNS}, w.URLs...)...); err != nil {
		return fmt.Errorf("--worker-token-file: %w", err)
	}
	return nil
}

// Workers is the datapath's view of the flags (nil without workers).
func (w *WorkerFlags) Workers() *datapath.Workers {
	if !w.enabled() {
		return nil
	}
	return &datapath.Workers{URLs: w.URLs, DNS: w.DNS, Refresh: w.Refresh, Dataset: w.Dataset,
		TokenFile: w.TokenFile, Timeout: w.Timeout, OriginFallback: w.OriginFallback,
		CAFile: w.TLS.CAFile, Insecure: w.TLS.Insecure}
}
