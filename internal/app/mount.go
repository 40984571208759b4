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

	"github.com/sluice-dev/sluice/internal/datapath"
	"github.com/sluice-dev/sluice/internal/fusefs"
	"github.com/sluice-dev/sluice/internal/metrics"
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
	PageCache   bool
	SmallFiles  bool
	AllowOther  bool
	FuseDebug   bool
	ProbeTime   time.Duration
}

// SmallFilesUsage is the help of every --small-files flag.
const SmallFilesUsage = "tune the mount for datasets of many small files: the kernel opens and closes files without asking sluice, so a cached file is read from the page cache with no request at all; every file then goes through the page cache, without passthrough or direct I/O, which costs large files more CPU on their first read"

// AddFlags registers the mount flags.
func (o *MountOptions) AddFlags(fs *pflag.FlagSet) {
	o.SourceFlags.AddFlags(fs)
	o.CacheFlags.AddFlags(fs)
	o.WorkerFlags.AddFlags(fs)
	fs.StringVar(&o.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at this address (e.g. :9090)")
	fs.BoolVar(&o.Passthrough, "passthrough", true, "serve fully cached files with kernel FUSE passthrough when available")
	fs.BoolVar(&o.PageCache, "page-cache", false, "keep what sluice answers itself (files not fully cached, or without passthrough) in the kernel's page cache, instead of direct I/O into the reader's buffer: faster re-reads of the same file through this mount, at the cost of filling page-cache pages on the first read")
	fs.BoolVar(&o.SmallFiles, "small-files", false, SmallFilesUsage)
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

// Config turns a command's source and cache flags into a datapath.Config
// for rawURL (without workers; the caller sets Workers).
func Config(rawURL string, sf *SourceFlags, cf *CacheFlags, m *metrics.Cache, probe time.Duration) (datapath.Config, error) {
	cc, err := cf.Config()
	if err != nil {
		return datapath.Config{}, err
	}
	return datapath.Config{Source: rawURL, Origin: sf.Options(), Cache: cc, MetadataTTL: cf.MetadataTTL,
		Probe: probe, Metrics: m}, nil
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
	cfg, err := Config(o.Source, &o.SourceFlags, &o.CacheFlags, m, o.ProbeTime)
	if err != nil {
		return err
	}
	cfg.Workers = o.WorkerFlags.Workers()
	rt, err := datapath.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer rt.Cache.Close()
	fsys := fusefs.New(rt.Listings, rt.Cache, fusefs.Options{
		Passthrough: o.Passthrough, PageCache: o.PageCache, NoOpen: o.SmallFiles, FsName: rt.Source.ID(), AllowOther: o.AllowOther, Debug: o.FuseDebug,
	})
	mnt, err := fsys.Mount(o.MountPoint)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "sluice: serving %s at %s\n", rt.Source.ID(), o.MountPoint)
	klog.InfoS("Mount serving", "source", rt.Source.ID(), "mountPoint", o.MountPoint)
	return mnt.ServeUntil(ctx)
}
