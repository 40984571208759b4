package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// Bucket is the bucket the data-path benchmark uploads its files to.
const Bucket = "bench"

// Options are the options of `sluice bench datapath`.
type Options struct {
	VersityGW      string   // versitygw binary (required)
	Rclone         string   // rclone binary; empty or missing: rclone rows are skipped
	S3fs           string   // s3fs binary; empty or missing: s3fs rows are skipped
	Sluice         string   // sluice binary; empty: the running executable
	BigSize        string   // W1's file
	SmallSize      string   // each of W2's files
	SmallCount     int      // W2's readers (one file each)
	JSON           string   // write the results here ("" = don't)
	WorkDir        string   // "" = a new temporary directory under /var/tmp
	GetConcurrency []int    // parallel-GET settings tried
	GetRange       string   // parallel-GET range size
	Only           []string // row keys to measure ("" = all)

	bigSize, smallSize, getRange int64
	rcloneSkip                   string // why rclone rows are skipped ("" = they run)
	s3fsSkip                     string // why s3fs rows are skipped ("" = they run)
}

// AddFlags registers the flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.VersityGW, "versitygw", "", "versitygw binary (the S3 origin; required)")
	fs.StringVar(&o.Rclone, "rclone", "", "rclone binary for the rclone rows (empty or missing: rows skipped)")
	fs.StringVar(&o.S3fs, "s3fs", "", "s3fs binary (Debian s3fs-fuse) for the s3fs rows (empty or missing: rows skipped)")
	fs.StringVar(&o.Sluice, "sluice", "", "sluice binary to mount with (default: the sluice beside this executable)")
	fs.StringVar(&o.BigSize, "big-size", "2Gi", "size of W1's file (one sequential reader)")
	fs.StringVar(&o.SmallSize, "small-size", "256Mi", "size of each of W2's files")
	fs.IntVar(&o.SmallCount, "small-count", 8, "number of W2's files and parallel readers")
	fs.StringVar(&o.JSON, "json", "", "write every number, setting and version to this JSON file")
	fs.StringVar(&o.WorkDir, "work-dir", "", "work directory, new or empty; removed at the end (default: a temporary directory under /var/tmp)")
	fs.IntSliceVar(&o.GetConcurrency, "get-concurrency", []int{8, 16, 32}, "parallel-GET concurrencies tried (the best is reported)")
	fs.StringVar(&o.GetRange, "get-range", "8Mi", "parallel-GET range size")
	fs.StringSliceVar(&o.Only, "only", nil, "measure only these rows (keys as in the JSON: direct,get,sluice-cold,...); the others are skipped")
}

// Validate checks the options and fills in defaults; it touches nothing.
func (o *Options) Validate() error {
	if o.VersityGW == "" {
		return errors.New("--versitygw is required")
	}
	if !isExecutable(o.VersityGW) {
		return fmt.Errorf("--versitygw %q is not an executable file", o.VersityGW)
	}
	var err error
	if o.Sluice, err = sluiceBinary(o.Sluice); err != nil {
		return err
	}
	o.rcloneSkip = rcloneSkip(o.Rclone)
	o.s3fsSkip = s3fsSkip(o.S3fs)
	if o.bigSize, err = parseSize("--big-size", o.BigSize); err != nil {
		return err
	}
	if o.smallSize, err = parseSize("--small-size", o.SmallSize); err != nil {
		return err
	}
	if o.getRange, err = parseSize("--get-range", o.GetRange); err != nil {
		return err
	}
	if o.getRange%ChunkSize != 0 {
		return fmt.Errorf("--get-range %q: want a multiple of 1Mi", o.GetRange)
	}
	if o.SmallCount < 1 || o.SmallCount > 256 {
		return fmt.Errorf("--small-count %d: want 1..256", o.SmallCount)
	}
	if len(o.GetConcurrency) == 0 {
		return errors.New("--get-concurrency: want at least one value")
	}
	for _, c := range o.GetConcurrency {
		if c < 1 || c > 256 {
			return fmt.Errorf("--get-concurrency %d: want 1..256", c)
		}
	}
	if o.WorkDir != "" {
		if !filepath.IsAbs(o.WorkDir) {
			return fmt.Errorf("--work-dir %q is not an absolute path", o.WorkDir)
		}
		if entries, err := os.ReadDir(o.WorkDir); err == nil && len(entries) > 0 {
			return fmt.Errorf("--work-dir %q is not empty (it is removed at the end)", o.WorkDir)
		}
	}
	return nil
}

// rcloneSkip says why rclone rows cannot run with binary rclone ("" if they can).
func rcloneSkip(rclone string) string {
	switch {
	case rclone == "":
		return "no --rclone given"
	case !isExecutable(rclone):
		return fmt.Sprintf("--rclone %q is not an executable file", rclone)
	}
	// rclone mount (bazil.org/fuse) always mounts through fusermount3.
	if _, err := exec.LookPath("fusermount3"); err != nil {
		return "rclone mount needs fusermount3, which is not installed (apt-get install fuse3)"
	}
	return ""
}

func parseSize(flag, s string) (int64, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a size (want e.g. 256Mi, 2Gi): %w", flag, s, err)
	}
	v, ok := q.AsInt64()
	if !ok || v < ChunkSize {
		return 0, fmt.Errorf("%s %q: want a whole number of bytes, at least 1Mi", flag, s)
	}
	return v, nil
}

// sluiceBinary is flag, or the sluice binary beside the running one (make
// builds bin/sluice and bin/sluice-bench), checked to be executable.
func sluiceBinary(flag string) (string, error) {
	if flag == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("--sluice not set and the running executable is unknown: %w", err)
		}
		flag = filepath.Join(filepath.Dir(exe), "sluice")
	}
	if !isExecutable(flag) {
		return "", fmt.Errorf("--sluice %q is not an executable file (run `make build`)", flag)
	}
	return flag, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// DatapathReport is what the JSON file holds.
type DatapathReport struct {
	Bench      string            `json:"bench"` // "datapath"
	BigSize    int64             `json:"bigSize"`
	SmallSize  int64             `json:"smallSize"`
	SmallCount int               `json:"smallCount"`
	Env        Env               `json:"env"`
	Settings   map[string]any    `json:"settings"`
	Files      map[string]string `json:"files"` // key → size and XXH3 digest of its chunk hashes
	Rows       []*Row            `json:"rows"`
	Targets    []TargetResult    `json:"targets"`
	Seconds    float64           `json:"seconds"` // wall time of the whole run
	Notes      []string          `json:"notes,omitempty"`
}

// dataset is the uploaded data: W1 reads Big, W2 reads Small in parallel.
type dataset struct {
	Big   File
	Small []File
}

// runner holds what the rows share.
type runner struct {
	o     *Options
	out   io.Writer
	gw    *s3server.Server
	data  dataset
	work  string
	cl    *cleanups
	notes []string
}

// Run runs the benchmark: it starts versitygw, uploads the data, measures
// every row, prints the table to out and writes the JSON file. Every
// process it starts is stopped and every mount it makes is detached on
// every exit path (also when ctx is cancelled by SIGINT).
func (o *Options) Run(ctx context.Context, out io.Writer) (err error) {
	start := time.Now()
	cl := &cleanups{}
	defer func() {
		if cerr := cl.run(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		}
	}()
	work, err := o.makeWorkDir()
	if err != nil {
		return err
	}
	cl.add(func() error { return os.RemoveAll(work) })
	fmt.Fprintf(out, "work directory %s\n", work)

	gw, err := s3server.LaunchKeepAlive(o.VersityGW, filepath.Join(work, "gw"))
	if err != nil {
		return err
	}
	cl.add(gw.Close)
	r := &runner{o: o, out: out, gw: gw, work: work, cl: cl}
	if r.data, err = r.upload(ctx); err != nil {
		return err
	}

	versions := map[string]string{
		"sluice":    versionOf(ctx, o.Sluice, "version"),
		"versitygw": versionOf(ctx, o.VersityGW, "--version"),
		"go-fuse":   "github.com/hanwen/go-fuse/v2 " + moduleVersion("github.com/hanwen/go-fuse/v2") + " (loopback row)",
	}
	if o.rcloneSkip == "" {
		versions["rclone"] = versionOf(ctx, o.Rclone, "version")
	}
	if o.s3fsSkip == "" {
		versions["s3fs"] = s3fsVersion(ctx, o.S3fs)
	}
	rows := r.measureRows(ctx)
	if err := ctx.Err(); err != nil {
		return err
	}
	targets := evaluate(rows)
	report := &DatapathReport{
		Bench: "datapath", BigSize: o.bigSize, SmallSize: o.smallSize, SmallCount: o.SmallCount, Env: CollectEnv(start, versions), Settings: o.settings(),
		Files: r.data.describe(), Rows: rows, Targets: targets, Notes: r.notes,
		Seconds: time.Since(start).Seconds(),
	}
	if err := datapathTable(report).Render(out); err != nil {
		return err
	}
	if o.JSON != "" {
		if err := WriteJSON(o.JSON, report); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
		fmt.Fprintf(out, "wrote %s\n", o.JSON)
	}
	var failed []string
	for _, row := range rows {
		if row.Error != "" {
			failed = append(failed, row.Key)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("rows failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

func (o *Options) makeWorkDir() (string, error) { return makeWorkDir(o.WorkDir) }

// makeWorkDir is dir (created), or a new temporary directory under /var/tmp.
func makeWorkDir(dir string) (string, error) {
	if dir != "" {
		return dir, os.MkdirAll(dir, 0o755)
	}
	return os.MkdirTemp("/var/tmp", "sluice-bench-")
}

func (o *Options) settings() map[string]any {
	return map[string]any{
		"readSize": ReadSize, "verification": "XXH3-64 per 1 MiB chunk, in a pipeline beside the reads",
		"getConcurrency": o.GetConcurrency, "getRange": o.getRange,
		"sluiceBinary": o.Sluice, "sluiceMountArgs": strings.Join(sluiceFlags(o), " "),
		"rcloneMountArgs": strings.Join(rcloneFlags, " "), "rcloneSkipped": o.rcloneSkip,
	}
}

// upload generates and uploads the files, recording their checksums.
func (r *runner) upload(ctx context.Context) (dataset, error) {
	var d dataset
	client := r.gw.Client()
	if err := makeBucket(ctx, r.gw, Bucket); err != nil {
		return d, err
	}
	total := r.o.bigSize + int64(r.o.SmallCount)*r.o.smallSize
	fmt.Fprintf(r.out, "uploading %s: 1 × %s and %d × %s to versitygw at %s\n",
		formatSize(total), formatSize(r.o.bigSize), r.o.SmallCount, formatSize(r.o.smallSize), r.gw.Endpoint)
	start := time.Now()
	put := func(key string, seed uint64, size int64) (File, error) {
		g := NewGenerator(seed, size)
		_, err := client.PutObject(ctx, Bucket, key, g, size, minio.PutObjectOptions{
			ContentType: "application/octet-stream", PartSize: 64 << 20, NumThreads: 4,
		})
		if err != nil {
			return File{}, fmt.Errorf("upload %s: %w", key, err)
		}
		return File{Key: key, Sum: g.Sum()}, nil
	}
	var err error
	if d.Big, err = put("big.bin", 1, r.o.bigSize); err != nil {
		return d, err
	}
	for i := range r.o.SmallCount {
		f, err := put(fmt.Sprintf("small-%02d.bin", i), uint64(100+i), r.o.smallSize)
		if err != nil {
			return d, err
		}
		d.Small = append(d.Small, f)
	}
	fmt.Fprintf(r.out, "uploaded in %.1fs\n", time.Since(start).Seconds())
	return d, nil
}

// workloads returns W1's and W2's files.
func (d dataset) workloads() [2][]File {
	return [2][]File{{d.Big}, d.Small}
}

func (d dataset) describe() map[string]string {
	m := map[string]string{}
	for _, f := range append([]File{d.Big}, d.Small...) {
		m[f.Key] = fmt.Sprintf("%d bytes, digest %016x", f.Sum.Size, f.Sum.Digest())
	}
	return m
}

// readBoth measures W1 then W2 on the files below dir.
func (r *runner) readBoth(ctx context.Context, dir string) (w [2]Measurement, err error) {
	for i, files := range r.data.workloads() {
		paths := make([]string, len(files))
		for j, f := range files {
			paths[j] = filepath.Join(dir, f.Key)
		}
		if w[i], err = readFiles(ctx, paths, files); err != nil {
			return w, fmt.Errorf("W%d: %w", i+1, err)
		}
	}
	return w, nil
}

// gwDir is the directory where versitygw keeps the bucket's objects.
func (r *runner) gwDir() string { return filepath.Join(r.gw.Root, Bucket) }

// makeBucket makes a bucket on a connection of its own: with keep-alive on,
// versitygw follows its answer to a zero-length PUT with a stray 400 on
// the same connection (package s3server).
func makeBucket(ctx context.Context, gw *s3server.Server, name string) error {
	c, err := minio.New(strings.TrimPrefix(gw.Endpoint, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(gw.AccessKey, gw.SecretKey, ""), Region: "us-east-1",
		Transport: &http.Transport{DisableKeepAlives: true},
	})
	if err != nil {
		return err
	}
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		return fmt.Errorf("create bucket: %w", err)
	}
	return nil
}
