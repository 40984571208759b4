package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// BurstOptions configure `sluice bench burst` (and `sluice demo`).
type BurstOptions struct {
	Versitygw, Rclone, Sluice string
	Files                     int
	FileSize                  string
	FilesAtOnce               int // files one client reads at once
	Clients                   []int
	Workers                   int
	// WorkerPeers gives each worker the others as its peers (as in a
	// cluster, where they find each other through their Service).
	WorkerPeers      bool
	Bandwidth        string
	Modes            []string
	RcloneMaxClients int
	NaiveMaxClients  int
	BlockSize        string
	// AheadJoin and ColdJoin: when the workers past the first start in
	// the scale-ahead and cold-start modes, after the clients' first read.
	AheadJoin, ColdJoin time.Duration
	JSON                string
	WorkDir             string
	// Keep leaves one sluice mount (and what it needs) up until SIGINT.
	Keep bool
	// Plain explains the results in words (the demo).
	Plain bool

	fileSize, bandwidth int64
}

// AddFlags registers the burst flags.
func (o *BurstOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Versitygw, "versitygw", "bin/versitygw", "versitygw binary (the S3 origin)")
	fs.StringVar(&o.Rclone, "rclone", "", "rclone binary (empty: skip the rclone mode)")
	fs.StringVar(&o.Sluice, "sluice", "", "sluice binary for the mounts and workers (default: the sluice beside this executable)")
	fs.IntVar(&o.Files, "files", 16, "files in the dataset")
	fs.StringVar(&o.FileSize, "file-size", "64Mi", "size of each file")
	fs.IntVar(&o.FilesAtOnce, "files-at-once", 4, "files one client reads at once, in listing order (1: one after another, like sha256sum part-*)")
	fs.IntSliceVar(&o.Clients, "clients", []int{16}, "concurrent clients (several: --clients 16,64)")
	fs.IntVar(&o.Workers, "workers", 2, "cache workers")
	fs.BoolVar(&o.WorkerPeers, "worker-peers", true, "give each cache worker the others as its peers (--peers), as in a cluster")
	fs.StringVar(&o.Bandwidth, "bandwidth", "100M", "origin bandwidth cap in bytes/s (100M = 100 MB/s)")
	fs.StringSliceVar(&o.Modes, "modes", []string{ModeNaive, ModeRclone, ModeSluice}, "modes to run")
	fs.IntVar(&o.NaiveMaxClients, "naive-max-clients", 16, "run the naive mode only up to this many clients (it reads N × the dataset)")
	fs.IntVar(&o.RcloneMaxClients, "rclone-max-clients", 16, "run the rclone mode only up to this many clients")
	fs.StringVar(&o.BlockSize, "block-size", "4Mi", "sluice block size")
	fs.DurationVar(&o.AheadJoin, "ahead-join", 3*time.Second, "scale-ahead mode: the workers past the first start this long after the clients' first read (in the e2e, workers asked for at admission were Ready 3-4 s after the first app started)")
	fs.DurationVar(&o.ColdJoin, "cold-join", 11*time.Second, "cold-start mode: the workers past the first start this long after the clients' first read (a 5 s heartbeat, then a worker pod's 6-7 s to Ready in the e2e)")
	fs.StringVar(&o.JSON, "json", "", "write the results as JSON to this file")
	fs.StringVar(&o.WorkDir, "work-dir", "", "scratch directory (default: a new one under /var/tmp, removed at the end)")
}

// Burst modes.
const (
	ModeNaive  = "naive"
	ModeRclone = "rclone"
	ModeSluice = "sluice"
	// ModeCopy: each client copies the dataset with `sluice fetch`
	// through the workers, then reads the copy.
	ModeCopy = "sluice-copy"
	// ModeScaleAhead and ModeColdStart: sluice with one worker when the
	// burst begins; the others join --ahead-join or --cold-join after the
	// clients' first read (burst_late.go).
	ModeScaleAhead = "scale-ahead"
	ModeColdStart  = "cold-start"
)

// Validate checks the flags.
func (o *BurstOptions) Validate() error {
	var err error
	if o.fileSize, err = quantity("--file-size", o.FileSize); err != nil {
		return err
	}
	if o.bandwidth, err = quantity("--bandwidth", o.Bandwidth); err != nil {
		return err
	}
	if o.Files < 1 || o.Workers < 1 || o.FilesAtOnce < 1 {
		return errors.New("--files, --workers and --files-at-once must be at least 1")
	}
	if o.AheadJoin < 0 || o.ColdJoin < 0 {
		return errors.New("--ahead-join and --cold-join must not be negative")
	}
	if len(o.Clients) == 0 || slices.Min(o.Clients) < 1 || slices.Max(o.Clients) > 256 {
		return errors.New("--clients: want 1..256 clients per run")
	}
	for _, m := range o.Modes {
		if !slices.Contains([]string{ModeNaive, ModeRclone, ModeSluice, ModeCopy, ModeScaleAhead, ModeColdStart}, m) {
			return fmt.Errorf("--modes: unknown mode %q (want naive, rclone, sluice, sluice-copy, scale-ahead, cold-start)", m)
		}
	}
	if _, err := quantity("--block-size", o.BlockSize); err != nil {
		return err
	}
	if _, err := os.Stat(o.Versitygw); err != nil {
		return fmt.Errorf("--versitygw %s: %w (run `make tools`)", o.Versitygw, err)
	}
	o.Sluice, err = sluiceBinary(o.Sluice)
	return err
}

func quantity(flag, s string) (int64, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil || q.Sign() <= 0 {
		return 0, fmt.Errorf("%s %q is not a positive size", flag, s)
	}
	return q.Value(), nil
}

// BurstResult is one mode at one client count.
type BurstResult struct {
	Mode              string  `json:"mode"`
	Clients           int     `json:"clients"`
	DatasetBytes      int64   `json:"datasetBytes"`
	OriginBytes       int64   `json:"originBytes"`
	OriginRatio       float64 `json:"originBytesOverDataset"`
	MakespanSec       float64 `json:"makespanSeconds"`
	IdealSec          float64 `json:"datasetOverBandwidthSeconds"`
	MakespanOverIdeal float64 `json:"makespanOverIdeal"`
	// OriginIdle is the share of the origin's active window in which it
	// sent under a tenth of its bandwidth (burst_idle.go).
	OriginIdle    float64 `json:"originIdleFraction"`
	TTFBp50Ms     float64 `json:"ttfbP50Ms"`
	TTFBp99Ms     float64 `json:"ttfbP99Ms"`
	AggregateMBps float64 `json:"aggregateMBps"`
	Verified      bool    `json:"verified"`
	// ClientPeakRSS and ClientCPUSec: the largest peak RSS of one mounted
	// client, and one client's mean CPU-seconds (user+sys).
	ClientPeakRSS int64   `json:"clientPeakRSSBytes,omitempty"`
	ClientCPUSec  float64 `json:"clientCPUSeconds,omitempty"`
	// Counters (sluice mode) say where the origin bytes went.
	Counters *BurstCounters `json:"counters,omitempty"`
	Note     string         `json:"note,omitempty"`
}

// burstEnv is what every mode shares: the origin behind its capped proxy.
type burstEnv struct {
	o     *BurstOptions
	work  string
	s3    *s3server.Server
	proxy *faultproxy.Proxy
	files []File
	// clientUse is set by each mounted run (runMounted).
	clientUse clientUse
	dataset   int64

	workers    []*child
	workerURLs []string
	// mountCounters are the mounts' series of the last mounted run, read
	// before they stopped.
	mountCounters []map[string]float64
	// late starts the workers past the first at the clients' first read
	// plus its delay, in the late modes (burst_late.go); lateNote says
	// when they served.
	late     *lateWorkers
	lateNote string
}

// RunBurst runs every mode at every client count and reports.
func (o *BurstOptions) RunBurst(ctx context.Context, out io.Writer) error {
	env, cleanup, err := o.setup(ctx, out)
	if err != nil {
		return err
	}
	defer cleanup()
	var results []BurstResult
	for _, n := range o.Clients {
		for _, mode := range o.Modes {
			if skip := o.skip(mode, n); skip != "" {
				fmt.Fprintf(out, "  %-7s N=%-3d skipped: %s\n", mode, n, skip)
				continue
			}
			fmt.Fprintf(out, "  %-7s N=%-3d running...\n", mode, n)
			r, err := env.run(ctx, mode, n)
			if err != nil {
				return fmt.Errorf("%s with %d clients: %w", mode, n, err)
			}
			results = append(results, r)
		}
	}
	printBurst(out, results, o)
	printBurstCounters(out, results)
	if o.JSON != "" {
		if err := writeBurstJSON(o, results); err != nil {
			return err
		}
		fmt.Fprintf(out, "\nJSON: %s\n", o.JSON)
	}
	if o.Keep {
		return env.keep(ctx, out)
	}
	return nil
}

func (o *BurstOptions) skip(mode string, n int) string {
	switch {
	case mode == ModeRclone && o.Rclone == "":
		return "no --rclone binary"
	case mode == ModeRclone && n > o.RcloneMaxClients:
		return fmt.Sprintf("more than --rclone-max-clients=%d (it reads N × the dataset)", o.RcloneMaxClients)
	case mode == ModeNaive && n > o.NaiveMaxClients:
		return fmt.Sprintf("more than --naive-max-clients=%d (it reads N × the dataset)", o.NaiveMaxClients)
	}
	return ""
}

// setup starts the origin, fills it and puts the capped proxy in front.
func (o *BurstOptions) setup(ctx context.Context, out io.Writer) (*burstEnv, func(), error) {
	work := o.WorkDir
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("/var/tmp", "sluice-burst-"); err != nil {
			return nil, nil, err
		}
	}
	env := &burstEnv{o: o, work: work}
	cleanup := func() {
		stopAll(env.workers)
		if env.proxy != nil {
			env.proxy.Close()
		}
		if env.s3 != nil {
			env.s3.Close()
		}
		os.RemoveAll(work)
	}
	var err error
	env.s3, err = s3server.Launch(o.Versitygw, filepath.Join(work, "origin"))
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	fmt.Fprintf(out, "origin: versitygw at %s; dataset %d × %s; origin bandwidth capped at %s\n",
		env.s3.Endpoint, o.Files, formatSize(o.fileSize), mbps(o.bandwidth))
	if err := env.s3.Client().MakeBucket(ctx, "burst", minio.MakeBucketOptions{}); err != nil {
		cleanup()
		return nil, nil, err
	}
	for i := 0; i < o.Files; i++ {
		key := fmt.Sprintf("shard-%03d.bin", i)
		g := NewGenerator(uint64(1000+i), o.fileSize)
		if _, err := env.s3.Client().PutObject(ctx, "burst", key, g, o.fileSize, minio.PutObjectOptions{PartSize: 64 << 20}); err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("uploading %s: %w", key, err)
		}
		env.files = append(env.files, File{Key: key, Sum: g.Sum()})
		env.dataset += o.fileSize
	}
	env.proxy, err = faultproxy.New(env.s3.Endpoint, faultproxy.Config{BandwidthBytesPerSec: o.bandwidth})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return env, cleanup, nil
}

// run measures one mode with n clients.
func (e *burstEnv) run(ctx context.Context, mode string, n int) (BurstResult, error) {
	before := e.proxy.BodyBytes()
	meter := startIdleMeter(e.proxy.BodyBytes)
	var ttfb []time.Duration
	var makespan time.Duration
	var err error
	switch mode {
	case ModeNaive:
		ttfb, makespan, err = e.runNaive(ctx, n)
	case ModeRclone, ModeSluice, ModeScaleAhead, ModeColdStart:
		start := e.startSluice
		switch mode {
		case ModeRclone:
			start = e.startRclone
		case ModeScaleAhead:
			start = e.startLate(e.o.AheadJoin)
		case ModeColdStart:
			start = e.startLate(e.o.ColdJoin)
		}
		e.clientUse = clientUse{}
		ttfb, makespan, err = e.runMounted(ctx, n, start)
	case ModeCopy:
		ttfb, makespan, err = e.runCopied(ctx, n)
	}
	idle := meter.fraction(e.o.bandwidth)
	if err != nil {
		return BurstResult{}, err
	}
	origin := e.proxy.BodyBytes() - before
	ideal := float64(e.dataset) / float64(e.o.bandwidth)
	r := BurstResult{Mode: mode, Clients: n, DatasetBytes: e.dataset, OriginBytes: origin,
		OriginRatio: float64(origin) / float64(e.dataset), MakespanSec: makespan.Seconds(), IdealSec: ideal,
		MakespanOverIdeal: makespan.Seconds() / ideal, OriginIdle: idle, Verified: true,
		AggregateMBps: float64(e.dataset) * float64(n) / makespan.Seconds() / 1e6}
	r.TTFBp50Ms, r.TTFBp99Ms = percentile(ttfb, 0.50), percentile(ttfb, 0.99)
	if mode != ModeNaive && mode != ModeCopy {
		r.ClientPeakRSS, r.ClientCPUSec = e.clientUse.peakRSS, e.clientUse.cpu
	}
	if mode != ModeNaive && mode != ModeRclone && mode != ModeCopy {
		r.Counters = e.counters()
		r.Note = e.lateNote
	}
	klog.V(2).InfoS("Burst mode done", "mode", mode, "clients", n, "makespan", makespan)
	return r, nil
}

func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.5) - 1
	return float64(s[max(0, min(i, len(s)-1))].Microseconds()) / 1000
}

func (e *burstEnv) paths(dir string) []string {
	var ps []string
	for _, f := range e.files {
		ps = append(ps, filepath.Join(dir, f.Key))
	}
	return ps
}

func modeDir(work, mode string, n int) string {
	return filepath.Join(work, fmt.Sprintf("%s-%d", strings.ToLower(mode), n))
}
