package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/driver/state"
	"github.com/sluice-dev/sluice/internal/app"
	"github.com/sluice-dev/sluice/internal/datapath"
	"github.com/sluice-dev/sluice/internal/fusefs"
	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/unixsock"
)

// ServeOptions are the options of the hidden `sluice csi serve-session`,
// the process that serves one FUSE session for the node plugin: a source
// URL, or a Dataset read through its cache workers. S3 credentials arrive
// in its environment, never in its arguments; a Dataset session has none
// and presents the node's token to the workers.
type ServeOptions struct {
	Source string
	// Dataset is the Dataset's name at its workers; Workers their address
	// (host:port of the headless Service, or http(s):// URLs); the token
	// file holds the node's projected service-account token.
	Dataset         string
	Workers         string
	WorkerTokenFile string
	WorkerTLS       app.TLSFlags
	WorkerTimeout   time.Duration
	MountDir        string
	StatsSocket     string
	ReadyFD         int
	CacheFlags      app.CacheFlags
	Passthrough     bool
	SmallFiles      bool
	ProbeTime       time.Duration
	// FuseFD is an inherited /dev/fuse descriptor that the node mounted
	// at MountDir (0: mount here). HandoverDir keeps what a successor
	// needs to take the connection over; Resume says this process is one.
	FuseFD      int
	HandoverDir string
	Generation  int
	Resume      bool
}

// AddFlags registers the serve-session flags.
func (o *ServeOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Source, "source", "", "source URL")
	fs.StringVar(&o.Dataset, "dataset", "", "Dataset name at its cache workers (instead of --source)")
	fs.StringVar(&o.Workers, "workers", "", "with --dataset: the workers' host:port (a headless Service) or http(s):// URLs, comma-separated")
	fs.StringVar(&o.WorkerTokenFile, "worker-token-file", "", "with --dataset: file holding the token presented to the workers")
	o.WorkerTLS.AddFlags(fs, "")
	fs.DurationVar(&o.WorkerTimeout, "worker-timeout", 30*time.Second, "with --dataset: one attempt at one worker, plus its bytes at 1 MiB/s; past it the worker is marked failed and the next one is tried")
	fs.StringVar(&o.MountDir, "mount-dir", "", "where to mount")
	fs.StringVar(&o.StatsSocket, "stats-socket", "", "unix socket serving /stats (JSON) and /metrics")
	fs.IntVar(&o.ReadyFD, "ready-fd", 0, "inherited file descriptor that gets \"ready\" or \"error CODE MESSAGE\" (0: none)")
	o.CacheFlags.AddFlags(fs)
	fs.BoolVar(&o.Passthrough, "passthrough", true, "serve fully cached files with kernel FUSE passthrough when available")
	fs.BoolVar(&o.SmallFiles, "small-files", false, app.SmallFilesUsage)
	fs.DurationVar(&o.ProbeTime, "probe-timeout", 20*time.Second, "how long to try reaching the origin before giving up")
	fs.IntVar(&o.FuseFD, "fuse-fd", 0, "inherited /dev/fuse descriptor already mounted at --mount-dir (0: mount here)")
	fs.StringVar(&o.HandoverDir, "handover-dir", "", "with --fuse-fd: directory of the connection's INIT record, inode and open logs and handback socket")
	fs.IntVar(&o.Generation, "generation", 1, "with --fuse-fd: this process's number among the connection's servers")
	fs.BoolVar(&o.Resume, "resume", false, "with --fuse-fd: take over a connection whose previous server died")
}

// ServeSession mounts o.Source (or o.Dataset, through its workers) at
// o.MountDir and serves it until ctx is done (then it unmounts) or the
// mount is unmounted from outside. Failures before serving are also
// reported, with their gRPC code, on o.ReadyFD.
func ServeSession(ctx context.Context, o *ServeOptions) (err error) {
	report := inheritedReadyPipe(o.ReadyFD)
	defer func() { report.fail(err) }() // nothing once ready
	if (o.Source == "") == (o.Dataset == "") || (o.Dataset != "" && o.Workers == "") || !filepath.IsAbs(o.MountDir) {
		return fmt.Errorf("%w: serve-session needs --source or --dataset with --workers, and an absolute --mount-dir", errInvalid)
	}
	if o.FuseFD > 0 && (o.HandoverDir == "" || o.Generation < 1 || o.Generation > 1<<16-1) {
		return fmt.Errorf("%w: --fuse-fd needs --handover-dir and a --generation from 1 to 65535", errInvalid)
	}
	reg := metrics.NewRegistry()
	m := metrics.NewCache(reg)
	cfg, err := app.Config(o.Source, &app.SourceFlags{}, &o.CacheFlags, m, o.ProbeTime)
	if err != nil {
		return fmt.Errorf("%w: %w", errInvalid, err)
	}
	if o.Dataset != "" {
		// Through the workers only: origin credentials stay with them.
		if o.WorkerTimeout <= 0 {
			return fmt.Errorf("%w: --worker-timeout %s: must be positive", errInvalid, o.WorkerTimeout)
		}
		if err := o.WorkerTLS.Validate(o.WorkerTokenFile, o.Workers); err != nil {
			return fmt.Errorf("%w: %w", errInvalid, err)
		}
		w := datapath.WorkersAt(o.Workers)
		w.Dataset, w.TokenFile, w.Timeout, w.Refresh = o.Dataset, o.WorkerTokenFile, o.WorkerTimeout, 10*time.Second
		w.CAFile, w.Insecure = o.WorkerTLS.CAFile, o.WorkerTLS.Insecure
		cfg.Workers = &w
	}
	rt, err := datapath.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer rt.Cache.Close()
	fsys := fusefs.New(rt.Listings, rt.Cache, fusefs.Options{
		Passthrough: o.Passthrough, NoOpen: o.SmallFiles, FsName: rt.Source.ID(), AllowOther: true,
	})
	var mnt *fusefs.Mount
	if o.FuseFD > 0 {
		h := state.HandoverIn(o.HandoverDir)
		h.FD, h.Generation, h.Resume = os.NewFile(uintptr(o.FuseFD), "/dev/fuse"), uint16(o.Generation), o.Resume
		mnt, err = fsys.ServeFD(o.MountDir, h)
	} else {
		mnt, err = fsys.Mount(o.MountDir)
	}
	if err != nil {
		return err
	}
	if o.StatsSocket != "" {
		var diskLimit int64
		if cfg, err := o.CacheFlags.Config(); err == nil && cfg.DiskDir != "" {
			diskLimit = cfg.DiskBytes
		}
		hp := newHealthProbe(rt.Source, func() int64 { mem, disk := rt.Cache.Stats(); return mem + disk }, reg)
		go hp.run(ctx)
		srv, err := serveStats(o.StatsSocket, reg, m, rt, diskLimit, hp)
		if err != nil {
			_ = mnt.Unmount()
			return err
		}
		defer srv.Close()
	}
	klog.InfoS("Session serving", "source", rt.Source.ID(), "mountDir", o.MountDir, "pid", os.Getpid(),
		"generation", o.Generation, "resumed", o.Resume)
	report.ready()
	return mnt.ServeUntil(ctx)
}

// serveStats serves the session's counters on a unix socket.
func serveStats(path string, reg *prometheus.Registry, m *metrics.Cache, rt *datapath.Runtime, diskLimit int64, hp *healthProbe) (*http.Server, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := unixsock.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("stats socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		mem, disk := rt.Cache.Stats()
		st := sessionStats{BytesServed: counter(m.BytesServed), OriginBytes: counter(m.OriginBytes),
			MemoryBytes: mem, DiskBytes: disk, DiskLimit: diskLimit, Health: hp.current()}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

func counter(c prometheus.Counter) int64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return 0
	}
	return int64(d.GetCounter().GetValue())
}
