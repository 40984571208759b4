package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// ReadSize is the size of every read(2) a sequential reader issues (dd bs=1M).
const ReadSize = ChunkSize

// pipelineDepth is how many 1 MiB buffers a sequential reader has in flight
// between its read loop and its verifier: verification runs beside the
// reads (on another core when there is one) instead of adding to them.
const pipelineDepth = 4

// Measurement is the result of one workload on one row.
type Measurement struct {
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	MBps    float64 `json:"mbPerSec"` // 10^6 bytes per second
	// Ratio is MBps divided by the reference row's MBps (0 without one).
	Ratio float64 `json:"ratio,omitempty"`
	// Pass is the row's target evaluated on Ratio (nil without a target).
	Pass *bool `json:"pass,omitempty"`
	// Settings says how the number was obtained when the row tried several.
	Settings string `json:"settings,omitempty"`
	// OpenSeconds is the longest open(2) among the readers (included in
	// Seconds): a file system that does work on open shows it here.
	OpenSeconds float64 `json:"openSeconds,omitempty"`
}

func newMeasurement(bytes int64, d time.Duration) Measurement {
	s := d.Seconds()
	m := Measurement{Bytes: bytes, Seconds: s}
	if s > 0 {
		m.MBps = float64(bytes) / s / 1e6
	}
	return m
}

// File is a file of the data set: its object key and expected content.
type File struct {
	Key string
	Sum *FileSum
}

// readFiles reads each path sequentially with ReadSize reads, all of them
// in parallel, verifying every chunk; the time is from the first open to
// the last verified byte.
func readFiles(ctx context.Context, paths []string, files []File) (Measurement, error) {
	start := time.Now()
	var total atomic.Int64
	errs := make([]error, len(paths))
	opens := make([]time.Duration, len(paths))
	var wg sync.WaitGroup
	for i := range paths {
		wg.Go(func() {
			n, err := readSequentialTimed(ctx, paths[i], files[i].Sum, &opens[i])
			total.Add(n)
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w", paths[i], err)
			}
		})
	}
	wg.Wait()
	m := newMeasurement(total.Load(), time.Since(start))
	for _, d := range opens {
		m.OpenSeconds = max(m.OpenSeconds, d.Seconds())
	}
	return m, errors.Join(errs...)
}

// readSequential reads path from start to end with ReadSize reads and
// verifies it against sum; it returns the bytes read.
func readSequential(ctx context.Context, path string, sum *FileSum) (int64, error) {
	var open time.Duration
	return readSequentialTimed(ctx, path, sum, &open)
}

// readSequentialTimed is readSequential that also stores how long open(2)
// took in openTime.
func readSequentialTimed(ctx context.Context, path string, sum *FileSum, openTime *time.Duration) (int64, error) {
	start := time.Now()
	f, err := os.Open(path)
	*openTime = time.Since(start)
	if err != nil {
		return 0, err
	}
	defer f.Close()

	type piece struct {
		buf []byte
		off int64
	}
	free := make(chan []byte, pipelineDepth)
	for range pipelineDepth {
		free <- make([]byte, ReadSize)
	}
	full := make(chan piece, pipelineDepth)
	verified := make(chan error, 1)
	var failed atomic.Bool
	go func() {
		var err error
		for p := range full {
			if err == nil {
				if err = sum.Verify(p.buf, p.off); err != nil {
					failed.Store(true)
				}
			}
			free <- p.buf[:cap(p.buf)]
		}
		verified <- err
	}()

	var off int64
	var readErr error
	for !failed.Load() {
		if readErr = ctx.Err(); readErr != nil {
			break
		}
		buf := <-free
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			full <- piece{buf[:n], off}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			readErr = err
			break
		}
	}
	close(full)
	if err := <-verified; err != nil {
		return off, err
	}
	if readErr != nil {
		return off, readErr
	}
	if off != sum.Size {
		return off, fmt.Errorf("read %d bytes, want %d", off, sum.Size)
	}
	return off, nil
}

// warmFiles reads paths once without timing or verification, so that their
// pages are in the page cache.
func warmFiles(ctx context.Context, paths []string) error {
	buf := make([]byte, ReadSize)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		for ctx.Err() == nil {
			if _, err = f.Read(buf); err != nil {
				break
			}
		}
		f.Close()
		if err != nil && err != io.EOF {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return ctx.Err()
}

// S3Target is where the parallel-GET reader reads from.
type S3Target struct {
	Endpoint             string // host:port
	AccessKey, SecretKey string
	Bucket               string
}

// newS3Client returns a minio client with a connection pool large enough for
// the widest parallel GET.
func newS3Client(t S3Target) (*minio.Client, error) {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return minio.New(t.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(t.AccessKey, t.SecretKey, ""),
		Region:       "us-east-1",
		Transport:    tr,
		BucketLookup: minio.BucketLookupPath,
	})
}

// getJob is one ranged GET.
type getJob struct {
	file int
	off  int64
	n    int64
}

// parallelGet reads every file with ranged GETs of rangeSize bytes,
// concurrency at a time, verifying each range. Ranges are handed out
// round-robin over the files, offset by offset.
func parallelGet(ctx context.Context, client *minio.Client, bucket string, files []File, concurrency int, rangeSize int64) (Measurement, error) {
	var jobs []getJob
	for off := int64(0); ; off += rangeSize {
		added := false
		for i, f := range files {
			if off < f.Sum.Size {
				jobs = append(jobs, getJob{file: i, off: off, n: min(rangeSize, f.Sum.Size-off)})
				added = true
			}
		}
		if !added {
			break
		}
	}
	core := minio.Core{Client: client}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var total atomic.Int64
	var firstErr error
	var errOnce sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			buf := make([]byte, rangeSize)
			for {
				i := next.Add(1) - 1
				if i >= int64(len(jobs)) || ctx.Err() != nil {
					return
				}
				j := jobs[i]
				if err := getRange(ctx, core, bucket, files[j.file], j, buf[:j.n]); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				total.Add(j.n)
			}
		})
	}
	wg.Wait()
	m := newMeasurement(total.Load(), time.Since(start))
	m.Settings = fmt.Sprintf("%d × %s ranges", concurrency, formatSize(rangeSize))
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return m, firstErr
}

func getRange(ctx context.Context, core minio.Core, bucket string, f File, j getJob, buf []byte) error {
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(j.off, j.off+j.n-1); err != nil {
		return err
	}
	body, _, _, err := core.GetObject(ctx, bucket, f.Key, opts)
	if err != nil {
		return fmt.Errorf("GET %s [%d, +%d): %w", f.Key, j.off, j.n, err)
	}
	defer body.Close()
	if _, err := io.ReadFull(body, buf); err != nil {
		return fmt.Errorf("GET %s [%d, +%d): %w", f.Key, j.off, j.n, err)
	}
	if err := f.Sum.Verify(buf, j.off); err != nil {
		return fmt.Errorf("GET %s: %w", f.Key, err)
	}
	return nil
}
