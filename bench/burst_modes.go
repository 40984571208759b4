package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"

	"k8s.io/klog/v2"
)

// clientConcurrency is how many files one client reads at once (a loader
// with a few threads).
const clientConcurrency = 4

// runNaive: every client downloads the dataset from the origin itself with
// parallel ranged GETs through the capped proxy.
func (e *burstEnv) runNaive(ctx context.Context, n int) ([]time.Duration, time.Duration, error) {
	client, err := newS3Client(S3Target{Endpoint: strings.TrimPrefix(e.proxy.URL(), "http://"),
		AccessKey: e.s3.AccessKey, SecretKey: e.s3.SecretKey, Bucket: "burst"})
	if err != nil {
		return nil, 0, err
	}
	ttfb := make([]time.Duration, n)
	start := time.Now()
	err = eachClient(n, func(i int) error {
		opts := minio.GetObjectOptions{}
		opts.SetRange(0, 4095)
		body, _, _, err := minio.Core{Client: client}.GetObject(ctx, "burst", e.files[0].Key, opts)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, body)
		body.Close()
		ttfb[i] = time.Since(start)
		if err != nil {
			return err
		}
		_, err = parallelGet(ctx, client, "burst", e.files, clientConcurrency, 8<<20)
		return err
	})
	return ttfb, time.Since(start), err
}

// runMounted starts n mounts with start, then every client reads the whole
// dataset through its own mount at once.
func (e *burstEnv) runMounted(ctx context.Context, n int, start func(ctx context.Context, dir string, i int) (*child, error)) ([]time.Duration, time.Duration, error) {
	base := modeDir(e.work, "mnt", n)
	var kids []*child
	defer func() { stopAll(kids) }()
	dirs := make([]string, n)
	for i := range n {
		dirs[i] = filepath.Join(base, fmt.Sprintf("c%03d", i))
		k, err := start(ctx, dirs[i], i)
		if err != nil {
			return nil, 0, err
		}
		kids = append(kids, k)
	}
	ttfb := make([]time.Duration, n)
	t0 := time.Now()
	if e.late != nil {
		e.late.begin(ctx, t0)
	}
	err := eachClient(n, func(i int) error {
		f, err := os.Open(filepath.Join(dirs[i], e.files[0].Key))
		if err != nil {
			return err
		}
		_, err = f.Read(make([]byte, 4096))
		f.Close()
		ttfb[i] = time.Since(t0)
		if err == nil {
			err = e.readAll(ctx, dirs[i])
		}
		if err != nil { // the cause is in the mount's log
			return fmt.Errorf("%w; %s's last output:\n%s", err, kids[i].name, kids[i].out.tail())
		}
		return nil
	})
	makespan := time.Since(t0)
	if e.late != nil {
		e.lateNote, e.late = e.late.end(), nil
	}
	e.mountCounters = e.mountCounters[:0]
	for _, k := range kids {
		if k.metrics == "" {
			continue
		}
		m, err := scrapeMetrics(k.metrics, mountSeries...)
		if err != nil {
			klog.InfoS("Reading a mount's counters", "mount", k.mountPoint, "err", err)
			continue
		}
		e.mountCounters = append(e.mountCounters, m)
	}
	stopAll(kids)
	e.clientUse = clientUse{}
	for _, k := range kids {
		e.clientUse.peakRSS = max(e.clientUse.peakRSS, k.peakRSS())
		e.clientUse.cpu += k.cpuSeconds() / float64(len(kids))
	}
	return ttfb, makespan, err
}

// clientUse is what the clients of the last mounted run used: the largest
// peak RSS of one client, and the mean CPU-seconds of one.
type clientUse struct {
	peakRSS int64
	cpu     float64
}

// readAll reads every file of the dataset under dir, FilesAtOnce at a
// time, verifying every chunk.
func (e *burstEnv) readAll(ctx context.Context, dir string) error {
	sem := make(chan struct{}, e.o.FilesAtOnce)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i, p := range e.paths(dir) {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := readSequential(ctx, p, e.files[i].Sum); err != nil {
				mu.Lock()
				first = errors.Join(first, fmt.Errorf("%s: %w", p, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}

func eachClient(n int, fn func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = fn(i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// startSluice starts the cache workers on the first call of a run and a
// credential-less `sluice mount` reading through them per client.
func (e *burstEnv) startSluice(ctx context.Context, dir string, i int) (*child, error) {
	if i == 0 {
		if err := e.startWorkers(ctx, filepath.Dir(dir)); err != nil {
			return nil, err
		}
	}
	return e.startMount(ctx, dir, e.workerURLs, e.originURL(), false)
}

// startMount starts a `sluice mount` of origin at dir reading through
// workers; with creds it holds the origin credentials and falls back to
// the origin when no worker answers, else it has none.
func (e *burstEnv) startMount(ctx context.Context, dir string, workers []string, origin string, creds bool) (*child, error) {
	env := []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}
	if creds {
		env = e.creds()
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	k, err := startServing(ctx, "sluice mount", dir, e.o.Sluice, []string{"mount", origin, dir,
		"--workers", strings.Join(workers, ","), "--worker-token-file", e.tokenFile(), "--insecure-workers",
		fmt.Sprintf("--origin-fallback=%t", creds), "--cache-dir", "", "--cache-memory", "64Mi",
		"--cache-disk", "4Gi", "--block-size", e.o.BlockSize, "--metrics-addr", addr}, env, "serving")
	if k != nil {
		k.metrics = addr
	}
	return k, err
}

func (e *burstEnv) originURL() string { return originURLOf(e.proxy.URL()) }

// originURLOf is the dataset's URL with the S3 endpoint at endpoint (the
// capped proxy, or a fault proxy in front of it).
func originURLOf(endpoint string) string {
	return "s3://burst?pathStyle=true&endpoint=" + endpoint
}

func (e *burstEnv) tokenFile() string { return filepath.Join(e.work, "worker-token") }

func (e *burstEnv) creds() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + e.s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.s3.SecretKey}
}

// startWorkers starts W fresh cache workers for one run (the first
// `first` of them now, the rest with startWorker later), each with the
// others as its peers, as in a cluster.
func (e *burstEnv) startWorkers(ctx context.Context, base string) error {
	return e.startFirstWorkers(ctx, base, e.o.Workers)
}

func (e *burstEnv) startFirstWorkers(ctx context.Context, base string, first int) error {
	stopAll(e.workers)
	e.workers, e.workerURLs = nil, nil
	for w := range e.o.Workers {
		// Fresh caches: an earlier mode's run at this N used these dirs.
		if err := os.RemoveAll(filepath.Join(base, fmt.Sprintf("worker-%d", w))); err != nil {
			return err
		}
		// A worker that starts late listens at a port chosen now: on an
		// address of its own, so that no mount's metrics port takes it
		// meanwhile (a mount then got 404s from that port as ENOENT).
		addr, err := freeAddrOn(fmt.Sprintf("127.0.1.%d", w+1))
		if err != nil {
			return err
		}
		e.workerURLs = append(e.workerURLs, "http://"+addr)
	}
	for w := range first {
		k, err := e.startWorkerAt(ctx, base, w)
		if err != nil {
			return err
		}
		e.workers = append(e.workers, k)
	}
	return nil
}

// startWorkerAt starts worker w of the set at e.workerURLs[w].
func (e *burstEnv) startWorkerAt(ctx context.Context, base string, w int) (*child, error) {
	var peers []string
	for i, u := range e.workerURLs {
		if i != w {
			peers = append(peers, u)
		}
	}
	var args []string
	if len(peers) > 0 && e.o.WorkerPeers {
		args = []string{"--peers", strings.Join(peers, ","), "--peer-token-file", e.tokenFile(), "--insecure-peers"}
	}
	k, _, err := e.startWorker(ctx, filepath.Join(base, fmt.Sprintf("worker-%d", w)),
		strings.TrimPrefix(e.workerURLs[w], "http://"), e.originURL(), args...)
	return k, err
}

// startWorker starts a cache worker of origin on cacheDir listening on
// listen ("127.0.0.1:0": a free port) and returns it with its URL.
func (e *burstEnv) startWorker(ctx context.Context, cacheDir, listen, origin string, extra ...string) (*child, string, error) {
	// Written once: the mounts and workers re-read it when it changes,
	// and workers start while they read.
	if _, err := os.Stat(e.tokenFile()); err != nil {
		if err := os.WriteFile(e.tokenFile(), []byte("bench-token\n"), 0o600); err != nil {
			return nil, "", err
		}
	}
	maddr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	k, err := startServing(ctx, "cache-worker", cacheDir, e.o.Sluice, append([]string{"cache-worker", origin,
		"--listen", listen, "--token-file", e.tokenFile(), "--block-size", e.o.BlockSize,
		"--cache-dir", cacheDir, "--cache-memory", "512Mi", "--cache-disk", "8Gi", "--max-fetches", "16",
		"--metrics-addr", maddr}, extra...), e.creds(), "listening on ")
	if err != nil {
		return nil, "", err
	}
	k.metrics = maddr
	_, addr, _ := strings.Cut(k.out.tail(), "listening on ")
	addr, _, _ = strings.Cut(addr, "\n")
	return k, "http://" + strings.TrimSpace(addr), nil
}

// startRclone mounts the bucket with rclone's full VFS cache.
func (e *burstEnv) startRclone(ctx context.Context, dir string, i int) (*child, error) {
	env := []string{"RCLONE_CONFIG_ORIGIN_TYPE=s3", "RCLONE_CONFIG_ORIGIN_PROVIDER=Other",
		"RCLONE_CONFIG_ORIGIN_ENDPOINT=" + e.proxy.URL(), "RCLONE_CONFIG_ORIGIN_ACCESS_KEY_ID=" + e.s3.AccessKey,
		"RCLONE_CONFIG_ORIGIN_SECRET_ACCESS_KEY=" + e.s3.SecretKey, "RCLONE_CONFIG_ORIGIN_FORCE_PATH_STYLE=true"}
	k, err := startChild("rclone mount", dir, e.o.Rclone, []string{"mount", "origin:burst", dir, "--read-only",
		"--vfs-cache-mode", "full", "--cache-dir", dir + ".cache", "--allow-other"}, env, "")
	if err != nil {
		return nil, err
	}
	if err := k.waitMounted(ctx, "fuse.rclone", 30*time.Second); err != nil {
		k.stop()
		return nil, err
	}
	return k, nil
}

// keep leaves one mount (and the workers) up until ctx ends (Ctrl-C).
func (e *burstEnv) keep(ctx context.Context, out io.Writer) error {
	dir := filepath.Join(modeDir(e.work, "keep", 1), "dataset")
	k, err := e.startSluice(ctx, dir, 0)
	if err != nil {
		return err
	}
	defer k.stop()
	defer stopAll(e.workers)
	fmt.Fprintf(out, "\nA sluice mount is up at %s (through %d cache workers). Try:\n  ls -l %s\n"+
		"Press Ctrl-C to unmount and clean up.\n", dir, len(e.workers), dir)
	sig, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-sig.Done()
	return nil
}

// startServing starts a child and waits (30 s) for its line containing want.
func startServing(ctx context.Context, name, dir, bin string, args, env []string, want string) (*child, error) {
	k, err := startChild(name, dir, bin, args, env, want)
	if err != nil {
		return nil, err
	}
	if err := k.waitServing(ctx, 30*time.Second); err != nil {
		k.stop()
		return nil, err
	}
	return k, nil
}

func stopAll(kids []*child) {
	var wg sync.WaitGroup
	for _, k := range kids {
		wg.Go(func() {
			if err := k.stop(); err != nil {
				klog.InfoS("Stopping a benchmark process", "err", err)
			}
		})
	}
	wg.Wait()
}
