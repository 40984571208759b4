package fusesidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/app"
	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/datapath"
	"github.com/sluice-dev/sluice/internal/fusefs"
	"github.com/sluice-dev/sluice/internal/heartbeat"
	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/mountutil"
)

// served is one mounted volume: a FUSE mount at a staging directory of
// the sidecar's own file system, bound (read-only) at the volume's mount
// path. The mount path is the emptyDir's mount point in the sidecar; a bind
// on it propagates (Bidirectional) to the app containers.
type served struct {
	vol     contract.SidecarVolume
	cache   *blockcache.Cache
	mnt     *fusefs.Mount
	staging string
}

// Run mounts every volume, serves the endpoints and heartbeats until ctx is
// done, the controller says "exit" or a mount goes away; then it unmounts
// everything and returns nil.
func (o *Options) Run(ctx context.Context, out io.Writer) error {
	if o.Check {
		return o.RunCheck(ctx, out)
	}
	start := time.Now()
	setMemoryLimit(o.MemoryFraction)
	if err := o.fitMemory(o.MemoryFraction); err != nil {
		return err
	}
	reg := metrics.NewRegistry()
	m := metrics.NewCache(reg)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	first := &heartbeat.FirstReads{}
	// Heartbeats start before the mounts: a Dataset scaled to zero gets its
	// first worker from this pod's first heartbeat, while the mount waits
	// (bounded by --probe-timeout) for it.
	if o.ControllerURL != "" {
		tc, err := o.TLS.Client()
		if err != nil {
			return err
		}
		hb := &heartbeat.Sender{URL: heartbeat.URL(o.ControllerURL), TokenFile: o.TokenFile,
			Interval: o.HeartbeatInterval, Registry: reg, Volumes: o.Volumes, TLS: tc, Insecure: o.TLS.Insecure,
			FirstReads: first}
		go func() {
			if hb.Run(ctx) {
				cancel(errors.New("the controller asked the sidecar to exit"))
			}
		}()
	}

	var mounts []*served
	defer func() { unmountAll(mounts) }()
	for _, v := range o.Volumes {
		s, err := o.mount(ctx, v, m, first)
		if err != nil {
			if ctx.Err() != nil {
				klog.InfoS("Stopped while mounting", "volume", v.Name, "err", err)
				return nil // SIGTERM during start-up is a clean exit too
			}
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		mounts = append(mounts, s)
	}
	srv, err := serveHTTP(o.Listen, reg, mounts)
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(out, "sluice: fuse-sidecar serving %d volume(s) after %s\n", len(mounts), time.Since(start).Round(time.Millisecond))
	klog.InfoS("Sidecar serving", "volumes", len(mounts), "took", time.Since(start))

	for _, s := range mounts {
		go func() {
			s.mnt.Wait()
			cancel(fmt.Errorf("volume %q was unmounted from outside", s.vol.Name))
		}()
	}
	<-ctx.Done()
	klog.InfoS("Sidecar stopping: unmounting every volume", "reason", context.Cause(ctx))
	return nil
}

// mount opens one volume's runtime with the shared internal/app code and
// mounts it.
// The first objects a volume of a Dataset reads go into first.
func (o *Options) mount(ctx context.Context, v contract.SidecarVolume, m *metrics.Cache, first *heartbeat.FirstReads) (*served, error) {
	cf := o.CacheFlags
	if cf.Dir != "" {
		cf.Dir = filepath.Join(cf.Dir, v.Name)
	}
	cfg, err := app.VolumeConfig(v, o.SourceFlags, cf, app.VolumeReader{TokenFile: o.TokenFile, TLS: o.TLS,
		WorkerTimeout: o.WorkerTimeout, Probe: o.ProbeTime, Metrics: m})
	if err != nil {
		return nil, err
	}
	rt, err := datapath.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if r, ok := rt.Source.(interface{ FirstReads() []string }); ok && v.Dataset != "" {
		first.Add(v.Dataset, r.FirstReads)
	}
	staging := filepath.Join(o.StagingDir, v.Name)
	fsys := fusefs.New(rt.Listings, rt.Cache, fusefs.Options{Passthrough: o.Passthrough, NoOpen: v.SmallFiles, FsName: rt.Source.ID(), AllowOther: true})
	mnt, err := fsys.Mount(staging)
	if err != nil {
		rt.Cache.Close()
		return nil, err
	}
	s := &served{vol: v, cache: rt.Cache, mnt: mnt, staging: staging}
	if err := bind(filepath.Join(staging, v.SubPath), v.MountPath); err != nil {
		unmountAll([]*served{s})
		if v.SubPath != "" {
			return nil, fmt.Errorf("subPath %q: %w", v.SubPath, err)
		}
		return nil, err
	}
	klog.InfoS("Volume mounted", "volume", v.Name, "source", rt.Source.ID(), "mountPath", v.MountPath, "subPath", v.SubPath)
	return s, nil
}

// bind binds from (a directory of a FUSE mount) read-only at target.
func bind(from, target string) error {
	fi, err := os.Stat(from)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", from)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(from, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s at %s: %w", from, target, err)
	}
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		_ = mountutil.Unmount(target)
		return fmt.Errorf("remount %s read-only: %w", target, err)
	}
	return nil
}

// unmountAll unmounts every volume at once (a busy mount must not delay
// the others) and closes the caches.
func unmountAll(mounts []*served) {
	var wg sync.WaitGroup
	for _, s := range mounts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if mountutil.IsMountPoint(s.vol.MountPath) {
				if err := mountutil.Unmount(s.vol.MountPath); err != nil {
					klog.ErrorS(err, "Unbinding failed", "volume", s.vol.Name, "mountPath", s.vol.MountPath)
				}
			}
			if err := s.mnt.Unmount(); err != nil {
				klog.ErrorS(err, "Unmount failed", "volume", s.vol.Name, "mountPath", s.vol.MountPath)
			}
			s.cache.Close()
		}()
	}
	wg.Wait()
}

// setMemoryLimit sets the Go memory limit to fraction of the container's
// memory limit (from the downward API), unless GOMEMLIMIT is set.
func setMemoryLimit(fraction float64) {
	raw := os.Getenv(contract.EnvMemoryLimit)
	if raw == "" || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || limit <= 0 {
		klog.InfoS("Ignoring an unusable memory limit", "env", contract.EnvMemoryLimit, "value", raw)
		return
	}
	set := int64(float64(limit) * fraction)
	debug.SetMemoryLimit(set)
	klog.InfoS("Go memory limit set", "bytes", set, "containerLimit", limit)
}
