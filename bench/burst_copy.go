package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// runCopied is copy mode: each client copies the dataset through the
// workers with `sluice fetch` (what the copy-mode init container runs),
// then reads its local copy, every chunk verified. Its time to first byte
// is when its copy is complete: an app in copy mode starts then.
func (e *burstEnv) runCopied(ctx context.Context, n int) ([]time.Duration, time.Duration, error) {
	base := modeDir(e.work, "copy", n)
	if err := e.startWorkers(ctx, base); err != nil {
		return nil, 0, err
	}
	ttfb := make([]time.Duration, n)
	t0 := time.Now()
	err := eachClient(n, func(i int) error {
		dir := filepath.Join(base, fmt.Sprintf("c%03d", i))
		defer os.RemoveAll(dir)
		if err := e.fetch(ctx, dir); err != nil {
			return err
		}
		ttfb[i] = time.Since(t0)
		return e.readAll(ctx, dir)
	})
	return ttfb, time.Since(t0), err
}

// fetch runs one credential-less `sluice fetch` of the dataset into dir
// through the workers and waits for it.
func (e *burstEnv) fetch(ctx context.Context, dir string) error {
	env := []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}
	k, err := startChild("sluice fetch", dir, e.o.Sluice, []string{"fetch", e.originURL(), dir,
		"--workers", strings.Join(e.workerURLs, ","), "--worker-token-file", e.tokenFile(), "--insecure-workers", "--origin-fallback=false",
		"--block-size", e.o.BlockSize, "--progress=false"}, env, "")
	if err != nil {
		return err
	}
	select {
	case <-k.exited:
	case <-ctx.Done():
		k.stop()
		return ctx.Err()
	}
	if k.waitErr != nil {
		return fmt.Errorf("sluice fetch: %w: %s", k.waitErr, k.out.tail())
	}
	return nil
}
