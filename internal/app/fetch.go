package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/datapath"
	"github.com/sluice-dev/sluice/internal/fetch"
	"github.com/sluice-dev/sluice/internal/heartbeat"
	"github.com/sluice-dev/sluice/internal/metrics"
)

// FetchOptions are the options of `sluice fetch SOURCE DIR` and of the
// copy-mode init container (`sluice fetch --volume JSON`).
type FetchOptions struct {
	Source            string
	Dir               string
	RawVolume         string
	Volume            *contract.SidecarVolume
	Include           []string
	Parallel          int
	Progress          bool
	ControllerURL     string
	HeartbeatInterval time.Duration
	ProbeTime         time.Duration
	SourceFlags       SourceFlags
	CacheFlags        CacheFlags
	WorkerFlags       WorkerFlags
}

// AddFlags registers the fetch flags.
func (o *FetchOptions) AddFlags(fs *pflag.FlagSet) {
	o.SourceFlags.AddFlags(fs)
	o.CacheFlags.AddFlags(fs)
	o.WorkerFlags.AddFlags(fs)
	fs.StringArrayVar(&o.Include, "include", nil, "copy only files whose path matches this glob (path.Match; **/ matches any directories); repeatable")
	fs.IntVar(&o.Parallel, "parallel", 16, "blocks read at once")
	fs.BoolVar(&o.Progress, "progress", true, "print progress (bytes, files, rate, time left) to standard error")
	fs.StringVar(&o.RawVolume, "volume", "", "a converted pod's volume as JSON (name, mountPath: the directory to fill, source or dataset+workers, subPath, credentialsEnv) instead of SOURCE DIR")
	fs.StringVar(&o.ControllerURL, "controller-url", "", "controller base URL for heartbeats (\"\": none)")
	fs.DurationVar(&o.HeartbeatInterval, "heartbeat-interval", 5*time.Second, "time between heartbeats")
	fs.DurationVar(&o.ProbeTime, "probe-timeout", 20*time.Second, "how long to try reaching the origin or the workers before giving up")
}

// Validate checks the options without touching the origin.
func (o *FetchOptions) Validate() error {
	if o.RawVolume != "" {
		if o.Source != "" || o.Dir != "" {
			return errors.New("--volume replaces SOURCE and DIR; give one or the other")
		}
		var v contract.SidecarVolume
		if err := json.Unmarshal([]byte(o.RawVolume), &v); err != nil {
			return fmt.Errorf("--volume: %w", err)
		}
		if (v.Source == "") == (v.Dataset == "") || (v.Dataset != "" && v.Workers == "") {
			return errors.New("--volume: want source, or dataset and workers")
		}
		if v.Source != "" {
			if err := validateSourceURL(v.Source); err != nil {
				return fmt.Errorf("--volume: %w", err)
			}
		}
		o.Volume, o.Dir = &v, v.MountPath
	} else if err := validateSourceURL(o.Source); err != nil {
		return err
	}
	if !filepath.IsAbs(o.Dir) {
		return fmt.Errorf("DIR %q is not an absolute path", o.Dir)
	}
	if o.Parallel < 1 || o.Parallel > 256 {
		return fmt.Errorf("--parallel %d: want 1 to 256", o.Parallel)
	}
	if o.ProbeTime <= 0 {
		return fmt.Errorf("--probe-timeout %s: must be positive", o.ProbeTime)
	}
	if _, err := o.CacheFlags.Config(); err != nil {
		return err
	}
	var to []string // where the token goes
	if o.Volume != nil && o.Volume.Dataset != "" {
		to = append(to, o.Volume.Workers)
	}
	if err := o.WorkerFlags.TLS.Validate(o.WorkerFlags.TokenFile, append(to, o.ControllerURL)...); err != nil {
		return fmt.Errorf("--worker-token-file: %w", err)
	}
	return o.WorkerFlags.Validate()
}

// RunFetch copies the dataset into the directory; progress goes to
// progress when --progress is set.
func (o *FetchOptions) RunFetch(ctx context.Context, progress io.Writer) (fetch.Result, error) {
	reg := metrics.NewRegistry()
	m := metrics.NewCache(reg)
	cfg, root, err := o.config(m)
	if err != nil {
		return fetch.Result{}, err
	}
	rt, err := datapath.Open(ctx, cfg)
	if err != nil {
		return fetch.Result{}, err
	}
	defer rt.Cache.Close()
	if o.ControllerURL != "" {
		hctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var vols []contract.SidecarVolume
		if o.Volume != nil {
			vols = []contract.SidecarVolume{*o.Volume}
		}
		tc, err := o.WorkerFlags.TLS.Client()
		if err != nil {
			return fetch.Result{}, err
		}
		hb := &heartbeat.Sender{URL: heartbeat.URL(o.ControllerURL), TokenFile: o.WorkerFlags.TokenFile,
			Interval: o.HeartbeatInterval, Registry: reg, Volumes: vols, TLS: tc, Insecure: o.WorkerFlags.TLS.Insecure}
		go hb.Run(hctx)
	}
	fc := fetch.Config{Source: rt.Source, Root: root, Dir: o.Dir, Include: o.Include,
		BlockSize: rt.Cache.BlockSize(), Parallel: o.Parallel, Metrics: m}
	if o.Progress {
		fc.Progress = progress
	}
	return fetch.Run(ctx, fc)
}

// config is the read stack and the dataset path to copy.
func (o *FetchOptions) config(m *metrics.Cache) (datapath.Config, string, error) {
	cf := o.CacheFlags
	cf.Dir = "" // the copy is the cache: blocks go straight to DIR
	if o.Volume != nil {
		cfg, err := VolumeConfig(*o.Volume, o.SourceFlags, cf, VolumeReader{TokenFile: o.WorkerFlags.TokenFile, TLS: o.WorkerFlags.TLS,
			WorkerTimeout: o.WorkerFlags.Timeout, Probe: o.ProbeTime, Metrics: m})
		return cfg, strings.Trim(o.Volume.SubPath, "/"), err
	}
	cfg, err := Config(o.Source, &o.SourceFlags, &cf, m, o.ProbeTime)
	if err != nil {
		return cfg, "", err
	}
	cfg.Workers = o.WorkerFlags.Workers()
	return cfg, "", nil
}
