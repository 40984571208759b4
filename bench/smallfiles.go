package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/spf13/pflag"
	"github.com/zeebo/xxh3"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// SmallFilesOptions are the options of `sluice-bench smallfiles`: a
// training-set shape of many small files in many directories, and one
// large directory.
type SmallFilesOptions struct {
	VersityGW, Rclone, Sluice string
	Files                     int    // small files, spread over Dirs directories
	FileSize                  string // each small file's size
	Dirs                      int
	BigDir                    int      // objects of the large directory (1 byte each)
	Readers                   int      // parallel readers and stat callers
	DropCaches                bool     // measure direct reads with the page cache dropped
	SluiceArgs                []string // more `sluice mount` flags
	JSON, WorkDir             string

	fileSize   int64
	rcloneSkip string
}

// AddFlags registers the flags.
func (o *SmallFilesOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.VersityGW, "versitygw", "", "versitygw binary (the S3 origin; required)")
	fs.StringVar(&o.Rclone, "rclone", "", "rclone binary for the rclone rows (empty or missing: rows skipped)")
	fs.StringVar(&o.Sluice, "sluice", "", "sluice binary to mount with (default: the sluice beside this executable)")
	fs.IntVar(&o.Files, "files", 50000, "small files")
	fs.StringVar(&o.FileSize, "file-size", "32Ki", "each small file's size")
	fs.IntVar(&o.Dirs, "dirs", 500, "directories the small files are spread over")
	fs.IntVar(&o.BigDir, "big-dir", 100000, "objects in the one large directory (0: none)")
	fs.IntVar(&o.Readers, "readers", 8, "parallel readers (and stat callers)")
	fs.StringSliceVar(&o.SluiceArgs, "sluice-arg", []string{"--metadata-ttl=5m"}, "`sluice mount` flags of every sluice row (repeatable; the default is rclone's default --dir-cache-time, so that a cold pass of over a minute does not leave the warm pass's metadata expired)")
	fs.BoolVar(&o.DropCaches, "drop-caches", true, "drop the machine's page cache before the cold direct row (root)")
	fs.StringVar(&o.JSON, "json", "", "write every number and setting to this JSON file")
	fs.StringVar(&o.WorkDir, "work-dir", "", "work directory, new or empty; removed at the end (default: a temporary directory under /var/tmp)")
}

// Validate checks the options.
func (o *SmallFilesOptions) Validate() error {
	if o.VersityGW == "" || !isExecutable(o.VersityGW) {
		return fmt.Errorf("--versitygw %q: want the versitygw binary", o.VersityGW)
	}
	var err error
	if o.Sluice, err = sluiceBinary(o.Sluice); err != nil {
		return err
	}
	o.rcloneSkip = rcloneSkip(o.Rclone)
	q, err := resource.ParseQuantity(o.FileSize)
	if err != nil {
		return fmt.Errorf("--file-size %q is not a size (want e.g. 32Ki): %w", o.FileSize, err)
	}
	o.fileSize = q.Value()
	switch {
	case o.Files < 1 || o.Files > 1_000_000:
		return fmt.Errorf("--files %d: want 1..1000000", o.Files)
	case o.Dirs < 1 || o.Dirs > o.Files:
		return fmt.Errorf("--dirs %d: want 1..--files", o.Dirs)
	case o.BigDir < 0 || o.BigDir > 1_000_000:
		return fmt.Errorf("--big-dir %d: want 0..1000000", o.BigDir)
	case o.Readers < 1 || o.Readers > 256:
		return fmt.Errorf("--readers %d: want 1..256", o.Readers)
	case o.fileSize < 1 || o.fileSize > 64<<20:
		return fmt.Errorf("--file-size %q: want 1 byte to 64Mi", o.FileSize)
	}
	return nil
}

// SmallFilesRow is one way of reading the set.
type SmallFilesRow struct {
	Name       string  `json:"name"`
	StatPerSec float64 `json:"statPerSecond"`
	ReadPerSec float64 `json:"readFilesPerSecond"`
	ListSec    float64 `json:"bigDirListSeconds,omitempty"` // ls -l of the large directory
	CPUSec     float64 `json:"mountCPUSeconds,omitempty"`   // of the mount process, cold and warm passes together
	// DirectStatPerSec and StatVsDirect: a warm mount row's stat passes
	// each paired with a pass over the gateway's own files (the median
	// direct stat/s, and the median of the pairs' ratios).
	DirectStatPerSec float64 `json:"directStatPerSecond,omitempty"`
	StatVsDirect     float64 `json:"statVsDirect,omitempty"`
	Skipped          string  `json:"skipped,omitempty"`
	Error            string  `json:"error,omitempty"`
}

// SmallFilesReport is what the JSON file holds.
type SmallFilesReport struct {
	Bench        string           `json:"bench"` // "smallfiles"
	Files        int              `json:"files"`
	FileSize     int64            `json:"fileSize"`
	Dirs         int              `json:"dirs"`
	BigDir       int              `json:"bigDir"`
	Readers      int              `json:"readers"`
	SluiceArgs   []string         `json:"sluiceArgs"`
	MinioListSec float64          `json:"minioListSeconds"` // listing the large directory's prefix with minio-go
	Env          Env              `json:"env"`
	Rows         []*SmallFilesRow `json:"rows"`
	Targets      []string         `json:"targets"`
	Seconds      float64          `json:"seconds"`
}

// smallSet is the uploaded set: every small file's key and content hash.
type smallSet struct {
	keys []string
	sums map[string]uint64
	big  string // the large directory's prefix ("" if none)
}

const smallBucket = "small"

// Run uploads the set, measures every row, prints the table and writes the
// JSON file; every process and mount it starts is stopped on every path.
func (o *SmallFilesOptions) Run(ctx context.Context, out io.Writer) (err error) {
	start := time.Now()
	cl := &cleanups{}
	defer func() {
		if cerr := cl.run(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		}
	}()
	work, err := makeWorkDir(o.WorkDir)
	if err != nil {
		return err
	}
	cl.add(func() error { return os.RemoveAll(work) })
	// Keep-alive on, as S3 keeps connections: without it each small
	// object's GET costs a TCP connection at both ends.
	gw, err := s3server.LaunchKeepAlive(o.VersityGW, filepath.Join(work, "gw"))
	if err != nil {
		return err
	}
	cl.add(gw.Close)
	fmt.Fprintf(out, "uploading %d × %s in %d directories and a directory of %d objects to versitygw at %s\n",
		o.Files, o.FileSize, o.Dirs, o.BigDir, gw.Endpoint)
	t0 := time.Now()
	if err := makeBucket(ctx, gw, smallBucket); err != nil {
		return err
	}
	set, err := o.upload(ctx, gw.Client())
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "uploaded in %.1fs\n", time.Since(t0).Seconds())
	rep := &SmallFilesReport{Bench: "smallfiles", Files: o.Files, FileSize: o.fileSize, Dirs: o.Dirs, BigDir: o.BigDir,
		Readers: o.Readers, SluiceArgs: o.SluiceArgs, Env: CollectEnv(start, map[string]string{"sluice": versionOf(ctx, o.Sluice, "version"),
			"versitygw": versionOf(ctx, o.VersityGW, "--version")})}
	if set.big != "" {
		t1 := time.Now()
		n := 0
		for obj := range gw.Client().ListObjects(ctx, smallBucket, minio.ListObjectsOptions{Prefix: set.big}) {
			if obj.Err != nil {
				return obj.Err
			}
			n++
		}
		rep.MinioListSec = time.Since(t1).Seconds()
		fmt.Fprintf(out, "minio-go listed the large directory (%d objects) in %.2fs\n", n, rep.MinioListSec)
	}
	r := &smallRunner{o: o, out: out, gw: gw, set: set, work: work, cl: cl}
	rep.Rows = r.measure(ctx)
	rep.Targets = smallTargets(rep)
	rep.Seconds = time.Since(start).Seconds()
	smallTable(rep).Render(out)
	if o.JSON != "" {
		if err := WriteJSON(o.JSON, rep); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s\n", o.JSON)
	}
	return nil
}

// upload puts the small files (pseudo-random, each hashed) and the large
// directory's 1-byte objects, 32 at a time.
func (o *SmallFilesOptions) upload(ctx context.Context, c *minio.Client) (*smallSet, error) {
	set := &smallSet{sums: map[string]uint64{}}
	for i := range o.Files {
		set.keys = append(set.keys, fmt.Sprintf("train/d%04d/f%07d.bin", i%o.Dirs, i))
	}
	contents := make([][]byte, len(set.keys))
	for i := range set.keys {
		b := make([]byte, o.fileSize)
		fill(b, ptrTo(uint64(i)*0x9e3779b97f4a7c15+1))
		contents[i] = b
		set.sums[set.keys[i]] = xxh3.Hash(b)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i, k := range set.keys {
		g.Go(func() error {
			_, err := c.PutObject(gctx, smallBucket, k, bytes.NewReader(contents[i]), int64(len(contents[i])), minio.PutObjectOptions{})
			return err
		})
	}
	if o.BigDir > 0 {
		set.big = "big/"
		for i := range o.BigDir {
			g.Go(func() error {
				_, err := c.PutObject(gctx, smallBucket, fmt.Sprintf("big/e%07d", i), bytes.NewReader([]byte{'x'}), 1, minio.PutObjectOptions{})
				return err
			})
		}
	}
	return set, g.Wait()
}

func ptrTo(v uint64) *uint64 { return &v }
