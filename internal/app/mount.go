package app

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/fusefs"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
)

// MountOptions are the options of `sluice mount SOURCE MOUNTPOINT`.
type MountOptions struct {
	Source      string
	MountPoint  string
	SourceFlags SourceFlags
	CacheFlags  CacheFlags
	WorkerFlags WorkerFlags
	MetricsAddr string
	Passthrough bool
	AllowOther  bool
	FuseDebug   bool
	ProbeTime   time.Duration
}

// AddFlags registers the mount flags.
func (o *MountOptions) AddFlags(fs *pflag.FlagSet) {
	o.SourceFlags.AddFlags(fs)
	o.CacheFlags.AddFlags(fs)
	o.WorkerFlags.AddFlags(fs)
	fs.StringVar(&o.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at this address (e.g. :9090)")
	fs.BoolVar(&o.Passthrough, "passthrough", true, "serve fully cached files with kernel FUSE passthrough when available")
	fs.BoolVar(&o.AllowOther, "allow-other", os.Geteuid() == 0, "let other users read the mount")
	fs.BoolVar(&o.FuseDebug, "fuse-debug", false, "log every FUSE request")
	fs.DurationVar(&o.ProbeTime, "probe-timeout", 20*time.Second, "how long to try reaching the origin before giving up")
}

// Validate checks the options without touching the origin.
func (o *MountOptions) Validate() error {
	if err := validateSourceURL(o.Source); err != nil {
		return err
	}
	if !filepath.IsAbs(o.MountPoint) {
		return fmt.Errorf("MOUNTPOINT %q is not an absolute path", o.MountPoint)
	}
	if _, err := o.CacheFlags.Config(); err != nil {
		return err
	}
	if err := o.WorkerFlags.Validate(); err != nil {
		return err
	}
	if o.ProbeTime <= 0 {
		return fmt.Errorf("--probe-timeout %s: must be positive", o.ProbeTime)
	}
	return nil
}

func validateSourceURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("SOURCE %q is not a URL: %w", raw, err)
	}
	switch u.Scheme {
	case "s3", "file", "http", "https":
		return nil
	default:
		return fmt.Errorf("SOURCE %q: unknown scheme %q; want s3://, file://, http:// or https://", raw, u.Scheme)
	}
}

// Runtime is an open source, its caches and the metrics registry: what a
// mount, a cache worker or a sidecar builds before serving.
type Runtime struct {
	Source   source.Source
	Listings *listcache.Cache
	Cache    *blockcache.Cache
	Metrics  *metrics.Cache
}

// OpenRuntime opens the source — the origin, or the cache workers when
// wf names some — checks that it answers (bounded by probe), and builds the
// caches. The caller closes Runtime.Cache; ctx bounds the workers' DNS
// refresh.
func OpenRuntime(ctx context.Context, rawURL string, sf *SourceFlags, cf *CacheFlags, wf *WorkerFlags, m *metrics.Cache, probe time.Duration) (*Runtime, error) {
	cfg, err := cf.Config()
	if err != nil {
		return nil, err
	}
	var src source.Source
	if wf != nil && wf.enabled() {
		wfc := *wf
		wfc.Budget = cfg.FetchTimeout
		src, err = wfc.open(ctx, rawURL, sf, probe, m)
	} else {
		src, err = sf.Open(rawURL)
	}
	if err != nil {
		return nil, err
	}
	// Probe until the deadline: an origin that is still starting, or cache
	// workers that are being scaled up from zero, answer within it.
	pctx, cancel := context.WithTimeout(ctx, probe)
	defer cancel()
	for {
		_, err := src.Stat(pctx, "")
		if err == nil {
			break
		}
		if source.IsPermanent(err) || pctx.Err() != nil {
			return nil, fmt.Errorf("cannot read %s: %w", src.ID(), err)
		}
		select {
		case <-pctx.Done():
			return nil, fmt.Errorf("cannot read %s: %w", src.ID(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
	cfg.Getter = blockcache.OriginGetter{Source: src}
	cfg.Metrics = m
	cache, err := blockcache.New(cfg)
	if err != nil {
		return nil, err
	}
	return &Runtime{Source: src, Listings: listcache.New(src, cf.MetadataTTL), Cache: cache, Metrics: m}, nil
}

// serveMetrics builds the data-path collectors and, when addr is set,
// serves them (with the Go and process collectors) at http://addr/metrics.
func serveMetrics(addr string) (*metrics.Cache, func(), error) {
	reg := metrics.NewRegistry()
	m := metrics.NewCache(reg)
	if addr == "" {
		return m, func() {}, nil
	}
	srv, err := metrics.Serve(addr, reg)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics-addr %q: %w", addr, err)
	}
	return m, func() { srv.Close() }, nil
}

// RunMount mounts and serves until ctx is done or the mount is unmounted
// from outside; it prints one line to out once the mount serves.
func (o *MountOptions) RunMount(ctx context.Context, out io.Writer) error {
	m, stop, err := serveMetrics(o.MetricsAddr)
	if err != nil {
		return err
	}
	defer stop()
	rt, err := OpenRuntime(ctx, o.Source, &o.SourceFlags, &o.CacheFlags, &o.WorkerFlags, m, o.ProbeTime)
	if err != nil {
		return err
	}
	defer rt.Cache.Close()
	fsys := fusefs.New(rt.Listings, rt.Cache, fusefs.Options{
		Passthrough: o.Passthrough, FsName: rt.Source.ID(), AllowOther: o.AllowOther, Debug: o.FuseDebug,
	})
	mnt, err := fsys.Mount(o.MountPoint)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "sluice: serving %s at %s\n", rt.Source.ID(), o.MountPoint)
	klog.InfoS("Mount serving", "source", rt.Source.ID(), "mountPoint", o.MountPoint)
	return mnt.ServeUntil(ctx)
}
