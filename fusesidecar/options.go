// Package fusesidecar is `sluice fuse-sidecar`, the FUSE sidecar the webhook
// injects into serverless pods. It is thin: each volume is mounted with the
// same internal/app and internal/fusefs code as `sluice mount`. A dataset
// volume reads only through the Dataset's cache workers (found by DNS,
// authenticated with the pod's projected token, no origin fallback); a
// source volume reads the origin with the credentials the webhook passed as
// environment from the user's Secret. Each FUSE mount is made at a staging
// directory of the sidecar's own file system and bound read-only (its
// subPath, if any) at the volume's mountPath, the emptyDir's mount point,
// from where Bidirectional propagation carries it to the app containers.
//
// The sidecar serves /readyz (every mount answers a stat of its root),
// /healthz and /metrics on --listen; `--check` asks /readyz (the postStart
// hook waits with --wait). It heartbeats to --controller-url and exits 0,
// unmounting everything, when the answer says "exit" or on SIGTERM.
package fusesidecar

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/sluice-dev/sluice/internal/app"
	"github.com/sluice-dev/sluice/internal/contract"
)

// Options are the options of `sluice fuse-sidecar`.
type Options struct {
	RawVolumes        []string
	Volumes           []contract.SidecarVolume
	Listen            string
	StagingDir        string
	ControllerURL     string
	HeartbeatInterval time.Duration
	TokenFile         string
	TLS               app.TLSFlags
	WorkerTimeout     time.Duration
	Passthrough       bool
	ProbeTime         time.Duration
	MemoryFraction    float64
	Check             bool
	Wait              time.Duration
	SourceFlags       app.SourceFlags
	CacheFlags        app.CacheFlags
}

// AddFlags registers the flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.SourceFlags.AddFlags(fs)
	o.CacheFlags.AddFlags(fs)
	fs.StringArrayVar(&o.RawVolumes, "volume", nil, "a volume to serve, as JSON (name, mountPath, source or dataset+workers, subPath, cacheSize, readahead, smallFiles, credentialsEnv); repeatable")
	fs.StringVar(&o.Listen, "listen", fmt.Sprintf(":%d", contract.SidecarPort), "address of /readyz, /healthz and /metrics")
	fs.StringVar(&o.StagingDir, "staging-dir", "/sluice/fuse", "where each volume's FUSE mount is made before it is bound at its mountPath (a directory of the sidecar's own file system)")
	fs.StringVar(&o.ControllerURL, "controller-url", "", "controller base URL for heartbeats (\"\": none)")
	fs.DurationVar(&o.HeartbeatInterval, "heartbeat-interval", 5*time.Second, "time between heartbeats")
	fs.StringVar(&o.TokenFile, "worker-token-file", "", "projected token presented to the cache workers and the controller")
	o.TLS.AddFlags(fs, "")
	fs.DurationVar(&o.WorkerTimeout, "worker-timeout", 30*time.Second, "one request to one cache worker")
	fs.BoolVar(&o.Passthrough, "passthrough", true, "serve fully cached files with kernel FUSE passthrough when available")
	fs.DurationVar(&o.ProbeTime, "probe-timeout", 20*time.Second, "how long to try reaching each volume's origin or workers")
	fs.Float64Var(&o.MemoryFraction, "memory-limit-fraction", contract.SidecarMemoryFraction, "GOMEMLIMIT as a fraction of $"+contract.EnvMemoryLimit)
	fs.BoolVar(&o.Check, "check", false, "ask the running sidecar at --listen whether every mount serves, then exit (0: ready)")
	fs.DurationVar(&o.Wait, "wait", 0, "with --check: keep asking for this long before failing")
}

// Validate checks the options.
func (o *Options) Validate() error {
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	if o.Check {
		if o.Wait < 0 {
			return fmt.Errorf("--wait %s: must not be negative", o.Wait)
		}
		return nil
	}
	if len(o.RawVolumes) == 0 {
		return errors.New("--volume: give at least one volume")
	}
	o.Volumes = o.Volumes[:0]
	names := map[string]bool{}
	for _, raw := range o.RawVolumes {
		var v contract.SidecarVolume
		dec := json.NewDecoder(strings.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("--volume %q: %w", raw, err)
		}
		if err := checkVolume(v); err != nil {
			return fmt.Errorf("--volume %q: %w", v.Name, err)
		}
		if names[v.Name] {
			return fmt.Errorf("--volume %q given twice", v.Name)
		}
		names[v.Name] = true
		o.Volumes = append(o.Volumes, v)
	}
	if !filepath.IsAbs(o.StagingDir) {
		return fmt.Errorf("--staging-dir %q is not an absolute path", o.StagingDir)
	}
	if o.HeartbeatInterval <= 0 {
		return fmt.Errorf("--heartbeat-interval %s: must be positive", o.HeartbeatInterval)
	}
	if o.MemoryFraction <= 0 || o.MemoryFraction > 1 {
		return fmt.Errorf("--memory-limit-fraction %g: want (0, 1]", o.MemoryFraction)
	}
	if o.ControllerURL != "" && !strings.HasPrefix(o.ControllerURL, "http://") && !strings.HasPrefix(o.ControllerURL, "https://") {
		return fmt.Errorf("--controller-url %q: want an http(s) URL", o.ControllerURL)
	}
	to := []string{o.ControllerURL}
	for _, v := range o.Volumes {
		if v.Dataset != "" {
			to = append(to, v.Workers)
		}
	}
	if err := o.TLS.Validate(o.TokenFile, to...); err != nil {
		return fmt.Errorf("--worker-token-file: %w", err)
	}
	_, err := o.CacheFlags.Config()
	return err
}

func checkVolume(v contract.SidecarVolume) error {
	switch {
	case v.Name == "":
		return errors.New("name is required")
	case !filepath.IsAbs(v.MountPath):
		return fmt.Errorf("mountPath %q is not absolute", v.MountPath)
	case (v.Source == "") == (v.Dataset == ""):
		return errors.New("give exactly one of source and dataset")
	case v.Dataset != "" && v.Workers == "":
		return errors.New("a dataset volume needs workers (host:port of the workers' Service, or http(s):// URLs)")
	case v.SubPath != "" && (filepath.IsAbs(v.SubPath) || filepath.Clean(v.SubPath) != v.SubPath || strings.HasPrefix(v.SubPath, "..")):
		return fmt.Errorf("subPath %q must be a clean relative path", v.SubPath)
	}
	return nil
}
