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
	err := eachClient(n, func(i int) error {
		f, err := os.Open(filepath.Join(dirs[i], e.files[0].Key))
		if err != nil {
			return err
		}
		_, err = f.Read(make([]byte, 4096))
		f.Close()
		ttfb[i] = time.Since(t0)
		if err != nil {
			return err
		}
		return e.readAll(ctx, dirs[i])
	})
	return ttfb, time.Since(t0), err
}

// readAll reads every file of the dataset under dir, clientConcurrency at a
// time, verifying every chunk.
func (e *burstEnv) readAll(ctx context.Context, dir string) error {
	sem := make(chan struct{}, clientConcurrency)
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
	noCreds := []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}
	return startServing(ctx, "sluice mount", dir, e.o.Sluice, []string{"mount", e.originURL(), dir,
		"--workers", strings.Join(e.workerURLs, ","), "--worker-token-file", e.tokenFile(),
		"--origin-fallback=false", "--cache-dir", "", "--cache-memory", "64Mi",
		"--cache-disk", "4Gi", "--block-size", e.o.BlockSize}, noCreds, "serving")
}

func (e *burstEnv) originURL() string {
	return "s3://burst?pathStyle=true&endpoint=" + e.proxy.URL()
}

func (e *burstEnv) tokenFile() string { return filepath.Join(e.work, "worker-token") }

// startWorkers starts W fresh cache workers for one run.
func (e *burstEnv) startWorkers(ctx context.Context, base string) error {
	stopAll(e.workers)
	e.workers, e.workerURLs = nil, nil
	if err := os.WriteFile(e.tokenFile(), []byte("bench-token\n"), 0o600); err != nil {
		return err
	}
	creds := []string{"AWS_ACCESS_KEY_ID=" + e.s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.s3.SecretKey}
	for w := range e.o.Workers {
		cacheDir := filepath.Join(base, fmt.Sprintf("worker-%d", w))
		k, err := startServing(ctx, "cache-worker", cacheDir, e.o.Sluice, []string{"cache-worker", e.originURL(),
			"--listen", "127.0.0.1:0", "--token-file", e.tokenFile(), "--block-size", e.o.BlockSize,
			"--cache-dir", cacheDir, "--cache-memory", "512Mi", "--cache-disk", "8Gi", "--max-fetches", "16"},
			creds, "listening on ")
		if err != nil {
			return err
		}
		e.workers = append(e.workers, k)
		_, addr, _ := strings.Cut(k.out.tail(), "listening on ")
		addr, _, _ = strings.Cut(addr, "\n")
		e.workerURLs = append(e.workerURLs, "http://"+strings.TrimSpace(addr))
	}
	return nil
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
