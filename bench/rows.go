package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sluice-dev/sluice/internal/mountutil"
)

// mountTimeout bounds how long a mount may take to serve.
const mountTimeout = 60 * time.Second

// rcloneFlags are the rclone mount flags besides the remote, the mount
// point, --config and --cache-dir (everything else is rclone's default).
var rcloneFlags = []string{"--vfs-cache-mode", "full", "--read-only"}

// measureRows measures every row in table order; a row that fails records
// its error and the run goes on (rows that depend on it are skipped).
func (r *runner) measureRows(ctx context.Context) []*Row {
	sluiceCache := filepath.Join(r.work, "sluice-cache")
	rcloneCache := filepath.Join(r.work, "rclone-cache")
	bufferedCache := filepath.Join(r.work, "sluice-cache-buffered")
	s3fsCache := filepath.Join(r.work, "s3fs-cache")
	plainWorkers := &Row{Key: "workers", Name: "through workers", Reference: "sluice-warm-nopt",
		Meaning: "a fresh `sluice mount` without a disk tier reading through one `sluice cache-worker` that holds the data, plain HTTP.",
		Limits:  []Limit{{Name: cpuLimit, Unit: "CPU-s/GiB", Max: 0.8}, {Name: "worker CPU", Unit: "CPU-s/GiB", Max: 0.4}}}
	rssMax := float64(sluiceMemory+64<<20) / (1 << 20)
	again := &Row{Key: "sluice-again", Name: "sluice warm, same mount", Reference: "direct", Target: &Target{">=", 0.9},
		Meaning: "the cold row's mount reading everything again at once: the FUSE page cache it filled (FOPEN_KEEP_CACHE) serves it, as the disk tier's O_DIRECT copy is not in the page cache."}
	buffered := &Row{Key: "sluice-cold-buffered", Name: "sluice cold, buffered writes", Reference: "get",
		Meaning: "the cold row with --cache-direct-writes=false: the disk copy goes through the page cache.",
		Limits:  []Limit{{Name: cpuLimit, Unit: "CPU-s/GiB", Max: 1.2}}}
	steps := []struct {
		row     *Row
		after   string // Key of a row that must have succeeded first
		measure func(context.Context, *Row) error
	}{
		{&Row{Key: "direct", Name: "direct (page cache)",
			Meaning: "read(2) of versitygw's own files on local disk, page cache warmed by one read first: the ceiling of any local read."},
			"", r.direct},
		{&Row{Key: "get", Name: "parallel GET (best)", Reference: "direct",
			Meaning: "the best parallel ranged GET with minio-go against versitygw: what the origin can deliver over HTTP."},
			"", r.parallelGET},
		{&Row{Key: "sluice-cold", Name: "sluice cold", Reference: "get", Target: &Target{">=", 0.6},
			Meaning: "a fresh `sluice mount` with an empty cache: every byte comes from the origin through readahead; the disk copy is written with O_DIRECT behind the readers.",
			Limits:  []Limit{{Name: cpuLimit, Unit: "CPU-s/GiB", Max: 1.2}, {Name: "peak RSS", Unit: "MiB", Max: rssMax}}},
			"", func(ctx context.Context, row *Row) error { return r.sluice(ctx, row, sluiceCache, true, again) }},
		{again, "sluice-cold", measuredBy("sluice-cold")},
		{&Row{Key: "sluice-warm", Name: "sluice warm (passthrough)", Reference: "direct", Target: &Target{">=", 0.9},
			Meaning: "a new `sluice mount` on the same cache dir (disk tier full, FUSE page cache empty): kernel passthrough reads the cache files, whose O_DIRECT writes left them out of the page cache: this first read comes from the disk."},
			"sluice-cold", func(ctx context.Context, row *Row) error { return r.sluice(ctx, row, sluiceCache, true, nil) }},
		{&Row{Key: "sluice-warm-nopt", Name: "sluice warm (no passthrough)", Reference: "loopback", Target: &Target{">=", 0.9},
			Meaning: "the same with --passthrough=false: every read is a FUSE request that sluice answers from its disk tier.",
			Limits:  []Limit{{Name: cpuLimit, Unit: "CPU-s/GiB", Max: 0.3}}},
			"sluice-cold", func(ctx context.Context, row *Row) error { return r.sluice(ctx, row, sluiceCache, false, nil) }},
		{buffered, "", func(ctx context.Context, row *Row) error {
			return r.sluice(ctx, row, bufferedCache, true, nil, "--cache-direct-writes=false")
		}},
		{&Row{Key: "sluice-warm-buffered", Name: "sluice warm (passthrough), buffered", Reference: "direct", Target: &Target{">=", 0.9},
			Meaning: "a new `sluice mount` on the buffered row's cache dir: passthrough reads cache files still in the page cache."},
			"sluice-cold-buffered", func(ctx context.Context, row *Row) error { return r.sluice(ctx, row, bufferedCache, true, nil) }},
		{&Row{Key: "loopback", Name: "go-fuse loopback", Reference: "direct",
			Meaning: "an in-process go-fuse loopback mount of versitygw's files with sluice's FUSE settings, passthrough off: the FUSE ceiling for the row above."},
			"", r.loopback},
		{plainWorkers, "", func(ctx context.Context, row *Row) error { return r.workers(ctx, row, false, nil) }},
		{&Row{Key: "workers-tls", Name: "through workers, TLS", Reference: "workers", Target: &Target{">=", 0.9},
			Meaning: "the same over TLS (the worker's certificate from a sluice CA, verified by the client; keep-alive and session resumption)."},
			"workers", func(ctx context.Context, row *Row) error { return r.workers(ctx, row, true, plainWorkers) }},
		{&Row{Key: "rclone-cold", Name: "rclone cold", Reference: "sluice-cold", Target: &Target{"<", 0.4},
			Meaning: "`rclone mount --vfs-cache-mode full` with an empty cache; below 0.40 means sluice cold is at least 2.5 × ahead."},
			"", func(ctx context.Context, row *Row) error { return r.rclone(ctx, row, rcloneCache) }},
		{&Row{Key: "rclone-warm", Name: "rclone warm", Reference: "sluice-warm", Target: &Target{"<", 1},
			Meaning: "a new rclone mount on the same cache dir; below 1.00 means sluice warm (passthrough) is ahead."},
			"rclone-cold", func(ctx context.Context, row *Row) error { return r.rclone(ctx, row, rcloneCache) }},
		{&Row{Key: "s3fs-cold", Name: "s3fs cold", Reference: "sluice-cold", Target: &Target{"<", 0.5},
			Meaning: "`s3fs -o use_cache` (Debian s3fs-fuse) with an empty cache; below 0.50 means sluice cold is at least 2 × ahead."},
			"", func(ctx context.Context, row *Row) error { return r.s3fs(ctx, row, s3fsCache) }},
		{&Row{Key: "s3fs-warm", Name: "s3fs warm", Reference: "sluice-warm", Target: &Target{"<", 1},
			Meaning: "a new s3fs mount on the same cache dir; below 1.00 means sluice warm (passthrough) is ahead."},
			"s3fs-cold", func(ctx context.Context, row *Row) error { return r.s3fs(ctx, row, s3fsCache) }},
	}
	ok := map[string]bool{}
	var rows []*Row
	for _, s := range steps {
		rows = append(rows, s.row)
		if ctx.Err() != nil {
			s.row.Skipped = "interrupted"
			continue
		}
		if !r.selected(s.row.Key) {
			s.row.Skipped = "not in --only"
			continue
		}
		if strings.HasPrefix(s.row.Key, "rclone") && r.o.rcloneSkip != "" {
			s.row.Skipped = r.o.rcloneSkip
			continue
		}
		if strings.HasPrefix(s.row.Key, "s3fs") && r.o.s3fsSkip != "" {
			s.row.Skipped = r.o.s3fsSkip
			continue
		}
		if s.after != "" && !ok[s.after] {
			s.row.Skipped = s.after + " row did not succeed"
			continue
		}
		fmt.Fprintf(r.out, "measuring %s ...\n", s.row.Name)
		if err := s.measure(ctx, s.row); err != nil {
			s.row.Error = err.Error()
			fmt.Fprintf(r.out, "  %s: error: %v\n", s.row.Name, err)
			continue
		}
		ok[s.row.Key] = true
		fmt.Fprintf(r.out, "  W1 %s MB/s, W2 %s MB/s\n", formatMBps(s.row.W1.MBps), formatMBps(s.row.W2.MBps))
	}
	return rows
}

// setBoth stores W1's and W2's results in row.
func setBoth(row *Row, w [2]Measurement) {
	row.W1, row.W2 = &w[0], &w[1]
}

func (r *runner) direct(ctx context.Context, row *Row) error {
	var paths []string
	for _, files := range r.data.workloads() {
		for _, f := range files {
			paths = append(paths, filepath.Join(r.gwDir(), f.Key))
		}
	}
	if err := warmFiles(ctx, paths); err != nil {
		return err
	}
	w, err := r.readBoth(ctx, r.gwDir())
	if err != nil {
		return err
	}
	setBoth(row, w)
	row.Settings = "files under " + r.gwDir()
	return nil
}

// getTrial is one parallel-GET setting on one workload.
type getTrial struct {
	Workload    string  `json:"workload"`
	Concurrency int     `json:"concurrency"`
	RangeBytes  int64   `json:"rangeBytes"`
	MBps        float64 `json:"mbPerSec"`
}

func (r *runner) parallelGET(ctx context.Context, row *Row) error {
	client, err := newS3Client(S3Target{
		Endpoint:  strings.TrimPrefix(r.gw.Endpoint, "http://"),
		AccessKey: r.gw.AccessKey, SecretKey: r.gw.SecretKey,
	})
	if err != nil {
		return err
	}
	var best [2]*Measurement
	var trials []getTrial
	for _, c := range r.o.GetConcurrency {
		for i, files := range r.data.workloads() {
			m, err := parallelGet(ctx, client, Bucket, files, c, r.o.getRange)
			if err != nil {
				return fmt.Errorf("W%d, concurrency %d: %w", i+1, c, err)
			}
			trials = append(trials, getTrial{fmt.Sprintf("W%d", i+1), c, r.o.getRange, m.MBps})
			if best[i] == nil || m.MBps > best[i].MBps {
				best[i] = &m
			}
		}
	}
	row.W1, row.W2 = best[0], best[1]
	row.Settings = fmt.Sprintf("W1 %s, W2 %s", best[0].Settings, best[1].Settings)
	row.Extra = map[string]any{"trials": trials}
	row.Notes = append(row.Notes, "best settings: "+row.Settings)
	return nil
}

// sluiceMemory is the memory tier of the data-path mounts (sluice's
// default --cache-memory).
const sluiceMemory = 256 << 20

// sluiceFlags are the `sluice mount` flags every sluice row passes besides
// source, mount point, cache dir, metrics address and passthrough.
func sluiceFlags(o *Options) []string {
	total := o.bigSize + int64(o.SmallCount)*o.smallSize
	disk := max(int64(8)<<30, (2*total+(1<<30)-1)/(1<<30)*(1<<30))
	return []string{"--s3-path-style", "--s3-region", "us-east-1", "--cache-disk", formatSize(disk)}
}

// selected reports whether --only lets the row with key be measured.
func (r *runner) selected(key string) bool {
	return len(r.o.Only) == 0 || slices.Contains(r.o.Only, key)
}

// measuredBy is the measure of a row that another row's measure fills in.
func measuredBy(key string) func(context.Context, *Row) error {
	return func(_ context.Context, row *Row) error {
		if row.W1 == nil || row.W2 == nil {
			return fmt.Errorf("not measured by the %s row", key)
		}
		return nil
	}
}

// sluice measures a fresh `sluice mount` on cacheDir, and with again set
// a second pass of the same mount right after, into again.
func (r *runner) sluice(ctx context.Context, row *Row, cacheDir string, passthrough bool, again *Row, extra ...string) error {
	mnt := filepath.Join(r.work, "mnt-"+row.Key)
	metricsAddr, err := freeAddr()
	if err != nil {
		return err
	}
	args := append([]string{"mount", "s3://" + Bucket, mnt, "--s3-endpoint", r.gw.Endpoint,
		"--cache-dir", cacheDir, "--metrics-addr", metricsAddr,
		"--passthrough=" + strconv.FormatBool(passthrough)}, sluiceFlags(r.o)...)
	args = append(args, extra...)
	env := []string{"AWS_ACCESS_KEY_ID=" + r.gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + r.gw.SecretKey}
	c, err := startChild("sluice mount", mnt, r.o.Sluice, args, env, "serving")
	if err != nil {
		return err
	}
	r.cl.add(c.stop)
	defer c.stop()
	if err := c.waitServing(ctx, mountTimeout); err != nil {
		return err
	}
	pass := func(row *Row) error {
		before, err := scrapeCounters(metricsAddr)
		if err != nil {
			return err
		}
		cpu0, err := c.cpuNow()
		if err != nil {
			return err
		}
		w, err := r.readBoth(ctx, mnt)
		if err != nil {
			return fmt.Errorf("%w; sluice output:\n%s", err, c.out.tail())
		}
		cpu1, err := c.cpuNow()
		if err != nil {
			return err
		}
		after, err := scrapeCounters(metricsAddr)
		if err != nil {
			return err
		}
		setBoth(row, w)
		r.sluiceNotes(row, w, passthrough, cpu1-cpu0, int64(after[servedMetric]-before[servedMetric]),
			int64(after[originMetric]-before[originMetric]))
		row.Settings = "sluice " + strings.Join(args, " ")
		return nil
	}
	if err := pass(row); err != nil {
		return err
	}
	if again != nil && r.selected(again.Key) {
		if err := pass(again); err != nil {
			again.Error = err.Error()
		}
	}
	if err := c.stop(); err != nil {
		return err
	}
	rss := c.peakRSS()
	row.Extra["sluicePeakRSSBytes"] = rss
	row.measured("peak RSS", float64(rss)/(1<<20))
	row.Notes = append(row.Notes, fmt.Sprintf("peak RSS %s (the mount's whole life)", formatBytes(rss)))
	return nil
}

// sluiceNotes records one pass of a sluice mount in row.
func (r *runner) sluiceNotes(row *Row, w [2]Measurement, passthrough bool, cpu float64, served, origin int64) {
	read := w[0].Bytes + w[1].Bytes
	row.CPUPerGiB = cpu / (float64(read) / (1 << 30))
	row.measured(cpuLimit, row.CPUPerGiB)
	row.Extra = map[string]any{"bytesRead": read, "bytesServedBySluice": served, "originBytes": origin, "sluiceCPUSeconds": cpu,
		"sluiceCPUPerGiB": row.CPUPerGiB}
	row.Notes = append(row.Notes, fmt.Sprintf("sluice mount used %.1f CPU-seconds (user+sys) for %s", cpu, formatBytes(read)))
	cold := strings.HasPrefix(row.Key, "sluice-cold")
	switch {
	case passthrough && !cold && served > read/100:
		row.Notes = append(row.Notes, fmt.Sprintf("sluice answered %s of %s with FUSE reads (not passthrough)",
			formatBytes(served), formatBytes(read)))
	case passthrough && !cold:
		row.Notes = append(row.Notes, fmt.Sprintf("passthrough or the page cache served all: sluice answered %s of %s itself", formatBytes(served), formatBytes(read)))
	}
	if open := max(w[0].OpenSeconds, w[1].OpenSeconds); open > 0.05 {
		row.Notes = append(row.Notes, fmt.Sprintf("open(2) took up to %.2fs (W1 %.2fs of %.2fs, W2 %.2fs of %.2fs)",
			open, w[0].OpenSeconds, w[0].Seconds, w[1].OpenSeconds, w[1].Seconds))
	}
	if !cold && origin > 0 {
		row.Notes = append(row.Notes, fmt.Sprintf("fetched %s from the origin although the disk tier should hold everything", formatBytes(origin)))
	}
}

// rclone measures a fresh `rclone mount` on cacheDir.
func (r *runner) rclone(ctx context.Context, row *Row, cacheDir string) error {
	mnt := filepath.Join(r.work, "mnt-"+row.Key)
	config := filepath.Join(r.work, "rclone.conf")
	if err := os.WriteFile(config, nil, 0o600); err != nil {
		return err
	}
	args := append([]string{"mount", "sluicebench:" + Bucket, mnt, "--config", config, "--cache-dir", cacheDir}, rcloneFlags...)
	env := []string{
		"RCLONE_CONFIG_SLUICEBENCH_TYPE=s3", "RCLONE_CONFIG_SLUICEBENCH_PROVIDER=Other",
		"RCLONE_CONFIG_SLUICEBENCH_ENDPOINT=" + r.gw.Endpoint, "RCLONE_CONFIG_SLUICEBENCH_REGION=us-east-1",
		"RCLONE_CONFIG_SLUICEBENCH_FORCE_PATH_STYLE=true",
		"RCLONE_CONFIG_SLUICEBENCH_ACCESS_KEY_ID=" + r.gw.AccessKey,
		"RCLONE_CONFIG_SLUICEBENCH_SECRET_ACCESS_KEY=" + r.gw.SecretKey,
	}
	return r.peer(ctx, row, peerMount{name: "rclone", bin: r.o.Rclone, mnt: mnt, args: args, env: env, fsType: "fuse.rclone"})
}

// peerMount is another FUSE client measured beside sluice.
type peerMount struct {
	name, bin, mnt string
	args, env      []string
	fsType         string // in /proc/self/mountinfo once it serves
	// unmountFirst ends it by unmounting (its exit status is not what is
	// measured) before the SIGTERM of child.stop.
	unmountFirst bool
}

// peer measures a fresh mount of p: both workloads, its CPU per GiB.
func (r *runner) peer(ctx context.Context, row *Row, p peerMount) error {
	c, err := startChild(p.name+" mount", p.mnt, p.bin, p.args, p.env, "")
	if err != nil {
		return err
	}
	r.cl.add(c.stop)
	defer c.stop()
	if err := c.waitMounted(ctx, p.fsType, mountTimeout); err != nil {
		return err
	}
	w, err := r.readBoth(ctx, p.mnt)
	if err != nil {
		return fmt.Errorf("%w; %s output:\n%s", err, p.name, c.out.tail())
	}
	if p.unmountFirst && mountutil.Unmount(p.mnt) == nil {
		select {
		case <-c.exited:
		case <-time.After(stopTimeout):
		}
	}
	if err := c.stop(); err != nil {
		if !p.unmountFirst {
			return err
		}
		row.Notes = append(row.Notes, p.name+" did not stop cleanly after the reads: "+firstLine(err.Error()))
	}
	setBoth(row, w)
	row.Settings = p.name + " " + strings.Join(p.args, " ")
	cpu, read := c.cpuSeconds(), w[0].Bytes+w[1].Bytes
	row.Extra = map[string]any{p.name + "CPUSeconds": cpu}
	row.CPUPerGiB = cpu / (float64(read) / (1 << 30))
	row.Notes = append(row.Notes, fmt.Sprintf("%s used %.1f CPU-seconds (user+sys) for %s", p.name, cpu, formatBytes(read)))
	return nil
}

// loopback measures an in-process go-fuse loopback mount of versitygw's
// files, set up like sluice's mounts (1 MiB requests, no splice, raised
// read_ahead_kb) with passthrough off.
func (r *runner) loopback(ctx context.Context, row *Row) error {
	mnt := filepath.Join(r.work, "mnt-loopback")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	root, err := fs.NewLoopbackRoot(r.gwDir())
	if err != nil {
		return err
	}
	ttl := time.Minute
	mo := fuse.MountOptions{
		FsName: "bench-loopback", Name: "loopback", MaxWrite: 1 << 20, DisableSplice: true,
		MaxBackground: 64, DirectMount: true,
	}
	mo.DisabledCapabilities |= fuse.CAP_PASSTHROUGH
	server, err := fs.Mount(mnt, root, &fs.Options{MountOptions: mo, EntryTimeout: &ttl, AttrTimeout: &ttl})
	if err != nil {
		return fmt.Errorf("go-fuse loopback mount: %w", err)
	}
	var once sync.Once
	var unmountErr error
	unmount := func() error {
		once.Do(func() {
			for range 20 {
				if unmountErr = server.Unmount(); unmountErr == nil {
					server.Wait()
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			unmountErr = mountutil.Unmount(mnt)
		})
		return unmountErr
	}
	r.cl.add(unmount)
	defer unmount()
	if err := mountutil.SetReadAheadKB(mnt, 1024); err != nil {
		row.Notes = append(row.Notes, "could not raise read_ahead_kb: "+err.Error())
	}
	w, err := r.readBoth(ctx, mnt)
	if err != nil {
		return err
	}
	if err := unmount(); err != nil {
		return err
	}
	setBoth(row, w)
	row.Settings = "fs.NewLoopbackRoot(" + r.gwDir() + "), MaxWrite 1Mi, DisableSplice, MaxBackground 64, no CAP_PASSTHROUGH, read_ahead_kb 1024"
	return nil
}

const (
	servedMetric = "sluice_bytes_served_total"
	originMetric = "sluice_origin_bytes_total"
)

// scrapeCounters reads sluice's served and origin byte counters.
func scrapeCounters(addr string) (map[string]float64, error) {
	return scrapeMetrics(addr, servedMetric, originMetric)
}

// scrapeMetrics reads the series of the named metrics from a sluice
// /metrics endpoint, keyed as printed (name{labels}).
func scrapeMetrics(addr string, names ...string) (map[string]float64, error) {
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scraping sluice metrics: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) != 2 {
			continue
		}
		name, _, _ := strings.Cut(f[0], "{")
		if !slices.Contains(names, name) {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	return out, s.Err()
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr() (string, error) { return freeAddrOn("127.0.0.1") }

// freeAddrOn is freeAddr on another loopback address.
func freeAddrOn(ip string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// formatBytes prints a byte count in binary units with one decimal.
func formatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
