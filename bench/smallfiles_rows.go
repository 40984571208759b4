package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/zeebo/xxh3"
	"golang.org/x/sync/errgroup"

	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// smallRunner holds what the small-file rows share.
type smallRunner struct {
	o    *SmallFilesOptions
	out  io.Writer
	gw   *s3server.Server
	set  *smallSet
	work string
	cl   *cleanups
}

// measure runs the rows in table order: the gateway's files directly
// (page cache dropped, then warm), a fresh sluice mount (cold, then the
// same mount warm), a fresh rclone mount (cold, then warm).
func (r *smallRunner) measure(ctx context.Context) []*SmallFilesRow {
	root := filepath.Join(r.gw.Root, smallBucket)
	var rows []*SmallFilesRow
	add := func(name string, fn func(row *SmallFilesRow) error) *SmallFilesRow {
		row := &SmallFilesRow{Name: name}
		fmt.Fprintf(r.out, "measuring %s ...\n", name)
		if err := fn(row); err != nil {
			row.Error = err.Error()
			fmt.Fprintf(r.out, "  %s: %v\n", name, err)
		}
		rows = append(rows, row)
		return row
	}
	if r.o.DropCaches {
		add("direct, page cache dropped", func(row *SmallFilesRow) error {
			if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
				return fmt.Errorf("dropping the page cache: %w", err)
			}
			return r.pass(ctx, root, row, false, "")
		})
	}
	settleMachine(ctx, settleLimit)
	add("direct, warm", func(row *SmallFilesRow) error { return r.pass(ctx, root, row, true, "") })

	mounted := func(kind string, start func(mnt, cache string) (*child, error)) {
		var c *child
		mnt := filepath.Join(r.work, "mnt-"+strings.NewReplacer(" ", "", "-", "").Replace(kind))
		add(kind+" cold", func(row *SmallFilesRow) error {
			var err error
			if c, err = start(mnt, filepath.Join(r.work, "cache-"+kind)); err != nil {
				return err
			}
			return r.pass(ctx, mnt, row, false, "")
		})
		if c == nil {
			return
		}
		c.settle(ctx, settleLimit)
		settleMachine(ctx, settleLimit)
		warm := add(kind+" warm (same mount)", func(row *SmallFilesRow) error { return r.pass(ctx, mnt, row, true, root) })
		if err := c.stop(); err != nil && warm.Error == "" {
			warm.Error = err.Error()
		}
		warm.CPUSec = c.cpuSeconds()
	}
	creds := []string{"AWS_ACCESS_KEY_ID=" + r.gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + r.gw.SecretKey}
	sluice := func(extra ...string) func(mnt, cache string) (*child, error) {
		return func(mnt, cache string) (*child, error) {
			args := append([]string{"mount", "s3://" + smallBucket, mnt,
				"--s3-endpoint", r.gw.Endpoint, "--s3-path-style", "--s3-region", "us-east-1", "--cache-dir", cache}, r.o.SluiceArgs...)
			c, err := startChild("sluice mount", mnt, r.o.Sluice, append(args, extra...), creds, "serving")
			if err != nil {
				return nil, err
			}
			r.cl.add(c.stop)
			return c, c.waitServing(ctx, mountTimeout)
		}
	}
	mounted("sluice", sluice())
	mounted(smallFilesKind, sluice("--small-files"))
	if r.o.rcloneSkip != "" {
		rows = append(rows, &SmallFilesRow{Name: "rclone", Skipped: r.o.rcloneSkip})
		return rows
	}
	mounted("rclone", func(mnt, cache string) (*child, error) {
		config := filepath.Join(r.work, "rclone.conf")
		if err := os.WriteFile(config, nil, 0o600); err != nil {
			return nil, err
		}
		env := []string{"RCLONE_CONFIG_SB_TYPE=s3", "RCLONE_CONFIG_SB_PROVIDER=Other", "RCLONE_CONFIG_SB_ENDPOINT=" + r.gw.Endpoint,
			"RCLONE_CONFIG_SB_REGION=us-east-1", "RCLONE_CONFIG_SB_FORCE_PATH_STYLE=true",
			"RCLONE_CONFIG_SB_ACCESS_KEY_ID=" + r.gw.AccessKey, "RCLONE_CONFIG_SB_SECRET_ACCESS_KEY=" + r.gw.SecretKey}
		c, err := startChild("rclone mount", mnt, r.o.Rclone, append([]string{"mount", "sb:" + smallBucket, mnt,
			"--config", config, "--cache-dir", cache}, rcloneFlags...), env, "")
		if err != nil {
			return nil, err
		}
		r.cl.add(c.stop)
		return c, c.waitMounted(ctx, "fuse.rclone", mountTimeout)
	})
	return rows
}

// smallFilesKind names the rows of the mount tuned for small files.
const smallFilesKind = "sluice --small-files"

const (
	// settleLimit bounds the wait for a mount to finish its cold pass's
	// work before the warm pass.
	settleLimit = 15 * time.Second
	// warmStatPasses is the number of stat passes of a warm row, whose
	// median is its stat/s: one pass of 50,000 cached stats takes about
	// a tenth of a second, too short to stand out of this machine's noise
	// (with 5 pairs, the median ratio to direct varied 0.78–0.91 between
	// runs).
	warmStatPasses = 9
)

// pass stats every small file (warm: warmStatPasses times, the median
// counting), reads every one (checking its hash), and lists the large
// directory with a stat of each entry (ls -l), in that order, under dir.
//
// A pass with pairWith set alternates each stat pass with one over the
// same files under pairWith (the gateway's own directory), so that the
// row's stat/s can be compared with the direct one measured beside it
// rather than minutes earlier.
func (r *smallRunner) pass(ctx context.Context, dir string, row *SmallFilesRow, warm bool, pairWith string) error {
	paths := make([]string, len(r.set.keys))
	for i, k := range r.set.keys {
		paths[i] = filepath.Join(dir, k)
	}
	passes := 1
	if warm {
		passes = warmStatPasses
	}
	if err := r.statPasses(ctx, dir, pairWith, passes, row); err != nil {
		return err
	}
	d, err := r.parallel(ctx, paths, func(p string, buf []byte) error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.ReadFull(f, buf)
		if err != nil && err != io.ErrUnexpectedEOF {
			return err
		}
		key, _ := filepath.Rel(dir, p)
		if xxh3.Hash(buf[:n]) != r.set.sums[key] {
			return fmt.Errorf("%s: wrong bytes", key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	row.ReadPerSec = float64(len(paths)) / d.Seconds()
	if r.set.big != "" {
		t0 := time.Now()
		big := filepath.Join(dir, r.set.big)
		entries, err := os.ReadDir(big)
		if err != nil {
			return fmt.Errorf("ls -l: %w", err)
		}
		for _, e := range entries {
			if _, err := os.Lstat(filepath.Join(big, e.Name())); err != nil {
				return fmt.Errorf("ls -l: %w", err)
			}
		}
		if len(entries) != r.o.BigDir {
			return fmt.Errorf("ls -l: %d entries, want %d", len(entries), r.o.BigDir)
		}
		row.ListSec = time.Since(t0).Seconds()
	}
	fmt.Fprintf(r.out, "  %.0f stat/s, %.0f files/s, ls -l %.2fs\n", row.StatPerSec, row.ReadPerSec, row.ListSec)
	if row.StatVsDirect > 0 {
		fmt.Fprintf(r.out, "  paired direct passes: %.0f stat/s; median ratio %.2f\n", row.DirectStatPerSec, row.StatVsDirect)
	}
	return nil
}

// statPasses stats every small file under dir passes times and sets the
// row's stat/s to the median; with pairWith set, each pass is paired with
// one under pairWith (in alternating order) and the row also gets the
// median direct stat/s and the median of the pairs' ratios.
func (r *smallRunner) statPasses(ctx context.Context, dir, pairWith string, passes int, row *SmallFilesRow) error {
	statAll := func(under string) (float64, error) {
		paths := make([]string, len(r.set.keys))
		for i, k := range r.set.keys {
			paths[i] = filepath.Join(under, k)
		}
		d, err := r.parallel(ctx, paths, func(p string, _ []byte) error { _, err := os.Lstat(p); return err })
		if err != nil {
			return 0, fmt.Errorf("stat: %w", err)
		}
		return float64(len(paths)) / d.Seconds(), nil
	}
	var rates, direct, ratios []float64
	for i := range passes {
		var rate, drate float64
		var err error
		if pairWith != "" && i%2 == 1 {
			if drate, err = statAll(pairWith); err != nil {
				return err
			}
		}
		if rate, err = statAll(dir); err != nil {
			return err
		}
		if pairWith != "" && i%2 == 0 {
			if drate, err = statAll(pairWith); err != nil {
				return err
			}
		}
		rates = append(rates, rate)
		if pairWith != "" {
			direct, ratios = append(direct, drate), append(ratios, rate/drate)
		}
	}
	row.StatPerSec = median(rates)
	if pairWith != "" {
		row.DirectStatPerSec, row.StatVsDirect = median(direct), median(ratios)
	}
	return nil
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}

// parallel runs fn on every path with o.Readers goroutines (each with its
// own buffer of one file), taking paths in order, and returns the time.
func (r *smallRunner) parallel(ctx context.Context, paths []string, fn func(p string, buf []byte) error) (time.Duration, error) {
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	t0 := time.Now()
	for range r.o.Readers {
		g.Go(func() error {
			buf := make([]byte, r.o.fileSize+1)
			for gctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(paths) {
					return nil
				}
				if err := fn(paths[i], buf); err != nil {
					return err
				}
			}
			return gctx.Err()
		})
	}
	err := g.Wait()
	return time.Since(t0), err
}

func smallTargets(rep *SmallFilesReport) []string {
	by := map[string]*SmallFilesRow{}
	for _, r := range rep.Rows {
		by[r.Name] = r
	}
	type target struct {
		what       string
		got, limit float64
		atMost     bool
	}
	var ts []target
	// The targets are for the mount tuned for small files; the default
	// mount's rows are in the table beside it.
	sw, sc, dw := by[smallFilesKind+" warm (same mount)"], by[smallFilesKind+" cold"], by["direct, warm"]
	rw, rc := by["rclone warm (same mount)"], by["rclone cold"]
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	if sw != nil && dw != nil {
		ts = append(ts, target{smallFilesKind + " warm read / direct warm read", ratio(sw.ReadPerSec, dw.ReadPerSec), 0.5, false},
			target{smallFilesKind + " warm stat / direct warm stat", warmStatRatio(sw, dw), 0.8, false})
	}
	if sw != nil && rw != nil {
		ts = append(ts, target{smallFilesKind + " warm read / rclone warm read", ratio(sw.ReadPerSec, rw.ReadPerSec), 5, false})
	}
	if sc != nil && rc != nil {
		ts = append(ts, target{smallFilesKind + " cold read / rclone cold read", ratio(sc.ReadPerSec, rc.ReadPerSec), 3, false})
	}
	if sc != nil && rep.MinioListSec > 0 {
		ts = append(ts, target{smallFilesKind + " cold ls -l of the large directory / minio-go listing", ratio(sc.ListSec, rep.MinioListSec), 2, true})
	}
	var out []string
	for _, t := range ts {
		pass := t.got >= t.limit
		op := "≥"
		if t.atMost {
			pass, op = t.got > 0 && t.got <= t.limit, "≤"
		}
		verdict := "FAIL"
		if pass {
			verdict = "pass"
		}
		out = append(out, fmt.Sprintf("%s: %.2f (target %s %.1f) %s", t.what, t.got, op, t.limit, verdict))
	}
	return out
}

// warmStatRatio is a warm mount row's stat/s over the direct one: the
// median ratio of its passes paired with direct passes when it has them.
func warmStatRatio(sw, dw *SmallFilesRow) float64 {
	if sw.StatVsDirect > 0 {
		return sw.StatVsDirect
	}
	if dw.StatPerSec == 0 {
		return 0
	}
	return sw.StatPerSec / dw.StatPerSec
}

func smallTable(rep *SmallFilesReport) *Table {
	t := &Table{
		Title: fmt.Sprintf("sluice bench smallfiles — %d × %s files in %d directories, %d readers; ls -l of a directory of %d objects",
			rep.Files, formatBytes(rep.FileSize), rep.Dirs, rep.Readers, rep.BigDir),
		Columns: []Column{{Name: "row"}, {Name: "stat/s", Right: true}, {Name: "read files/s", Right: true},
			{Name: "ls -l big dir", Right: true}, {Name: "mount CPU-s", Right: true}},
	}
	for _, r := range rep.Rows {
		if r.Skipped != "" || r.Error != "" {
			t.Notes = append(t.Notes, fmt.Sprintf("%s: %s%s", r.Name, r.Skipped, firstLine(r.Error)))
			continue
		}
		cpu := "-"
		if r.CPUSec > 0 {
			cpu = fmt.Sprintf("%.1f", r.CPUSec)
		}
		t.Rows = append(t.Rows, []string{r.Name, fmt.Sprintf("%.0f", r.StatPerSec), fmt.Sprintf("%.0f", r.ReadPerSec),
			fmt.Sprintf("%.2f s", r.ListSec), cpu})
	}
	t.Notes = append(t.Notes, fmt.Sprintf("sluice rows mount with %s; rclone rows with %s", strings.Join(rep.SluiceArgs, " "), strings.Join(rcloneFlags, " ")),
		fmt.Sprintf("minio-go lists the large directory's prefix in %.2f s", rep.MinioListSec),
		"mount CPU-s: the mount process's user+sys CPU over its cold and warm passes (on the warm row)",
		fmt.Sprintf("warm rows: stat/s is the median of %d stat passes; a warm pass starts when the mount's CPU time has stopped growing and the machine's CPUs are idle (at most %s each)", warmStatPasses, settleLimit),
		"warm stat / direct warm stat: the median ratio of a warm mount row's stat passes each paired with a direct pass over the same files")
	t.Notes = append(t.Notes, rep.Targets...)
	t.Notes = append(t.Notes, fmt.Sprintf("run took %.0fs; kernel %s, %s, %d CPUs", rep.Seconds, rep.Env.Kernel, rep.Env.Go, rep.Env.CPUs))
	return t
}
