// Package app holds the options of sluice's data-path commands, `sluice
// mount` and `sluice cache-worker`, and the flag sets they share with the
// CSI session and the sidecar (source, cache): flags, validation that names
// the offending flag, and the code that turns them into a datapath.Config
// and runs it.
package app

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// SourceFlags are the origin flags shared by every command that reads a
// source. URL query parameters override them (see source.Parse).
type SourceFlags struct {
	S3Endpoint  string
	S3Region    string
	S3PathStyle bool
	// AccessKey and SecretKey, when set, are used instead of the
	// environment: a process serving volumes with different Secrets (the
	// FUSE sidecar) sets them per volume. They are not flags.
	AccessKey, SecretKey string
	flags                *pflag.FlagSet
}

// AddFlags registers the source flags.
func (s *SourceFlags) AddFlags(fs *pflag.FlagSet) {
	s.flags = fs
	fs.StringVar(&s.S3Endpoint, "s3-endpoint", "", "S3 endpoint URL, e.g. http://127.0.0.1:9000 (default: AWS)")
	fs.StringVar(&s.S3Region, "s3-region", "", "S3 region")
	fs.BoolVar(&s.S3PathStyle, "s3-path-style", false, "use path-style S3 requests (default: auto)")
}

// Options are the origin options the flags give. Without AccessKey and
// SecretKey, credentials come from the environment (AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY) or the AWS credentials file.
func (s *SourceFlags) Options() source.Options {
	opts := source.Options{S3Endpoint: s.S3Endpoint, S3Region: s.S3Region, AccessKey: s.AccessKey, SecretKey: s.SecretKey}
	if s.flags != nil && s.flags.Changed("s3-path-style") {
		opts.S3PathStyle = &s.S3PathStyle
	}
	return opts
}

// CacheFlags are the block-cache flags.
type CacheFlags struct {
	Dir         string
	Memory      string
	Disk        string
	DirectDisk  bool
	BlockSize   string
	Readahead   int
	MaxFetches  int
	MetadataTTL time.Duration
	// ReadBudget is how long a read may wait for a block; set it before
	// AddFlags to change the flag's default (DefaultReadBudget).
	ReadBudget time.Duration
}

// DefaultReadBudget is the read budget of mounts, sidecars and CSI
// sessions. Cache workers use WorkerReadBudget, longer: a worker's fetch
// serves every client that asks for the block, and a client's request
// ends at the client's own deadline (a 504) while the fetch goes on, so the
// client's next attempt joins it instead of starting the transfer again
// (see internal/cacheserver).
const (
	DefaultReadBudget = 60 * time.Second
	WorkerReadBudget  = 2 * time.Minute
)

// AddFlags registers the cache flags.
func (c *CacheFlags) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Dir, "cache-dir", defaultCacheDir(), "directory of the disk tier (\"\" disables it)")
	fs.StringVar(&c.Memory, "cache-memory", "256Mi", "memory tier size (a Kubernetes quantity)")
	fs.StringVar(&c.Disk, "cache-disk", "10Gi", "disk tier size (a Kubernetes quantity)")
	fs.BoolVar(&c.DirectDisk, "cache-direct-writes", true, "write the disk tier with O_DIRECT: a cold read allocates no page cache for its disk copy (on VMs where that is dear, the largest cost of a cold read); a new mount's first read of the file then comes from the disk (false: buffered writes, whose page cache serves that read)")
	fs.StringVar(&c.BlockSize, "block-size", "4Mi", "cache block size")
	fs.IntVar(&c.Readahead, "readahead", blockcache.DefaultReadahead, "blocks fetched ahead of a sequential reader (0 disables)")
	fs.IntVar(&c.MaxFetches, "max-fetches", blockcache.DefaultMaxFetches, "blocks fetched in parallel from the tier below (origin or workers)")
	fs.DurationVar(&c.MetadataTTL, "metadata-ttl", 60*time.Second, "how long listings and attributes are cached")
	if c.ReadBudget <= 0 {
		c.ReadBudget = DefaultReadBudget
	}
	fs.DurationVar(&c.ReadBudget, "read-budget", c.ReadBudget, "how long a read may wait for a block, every retry and every path (workers, origin) included; past it the read fails (EIO) with the cause logged")
}

func defaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "sluice")
	}
	return ""
}

// Config validates the flags and returns the cache configuration (without
// Getter and Metrics, which the caller sets).
func (c *CacheFlags) Config() (blockcache.Config, error) {
	var cfg blockcache.Config
	var err error
	if cfg.MemoryBytes, err = parseSize("--cache-memory", c.Memory, 1<<20); err != nil {
		return cfg, err
	}
	if cfg.DiskBytes, err = parseSize("--cache-disk", c.Disk, 1<<20); err != nil {
		return cfg, err
	}
	if cfg.BlockSize, err = parseSize("--block-size", c.BlockSize, 64<<10); err != nil {
		return cfg, err
	}
	if cfg.BlockSize > 256<<20 {
		return cfg, fmt.Errorf("--block-size %q: at most 256Mi", c.BlockSize)
	}
	if cfg.BlockSize > cfg.MemoryBytes {
		return cfg, fmt.Errorf("--cache-memory %q is smaller than one block (--block-size %q)", c.Memory, c.BlockSize)
	}
	if c.Readahead < 0 || c.Readahead > 256 {
		return cfg, fmt.Errorf("--readahead %d: want 0..256 blocks", c.Readahead)
	}
	cfg.Readahead = c.Readahead
	if c.MaxFetches < 1 || c.MaxFetches > 1024 {
		return cfg, fmt.Errorf("--max-fetches %d: want 1..1024", c.MaxFetches)
	}
	cfg.MaxFetches = c.MaxFetches
	if c.MetadataTTL < 0 {
		return cfg, fmt.Errorf("--metadata-ttl %s: must not be negative", c.MetadataTTL)
	}
	switch {
	case c.ReadBudget == 0:
		cfg.FetchTimeout = DefaultReadBudget
	case c.ReadBudget < time.Second:
		return cfg, fmt.Errorf("--read-budget %s: want at least 1s", c.ReadBudget)
	default:
		cfg.FetchTimeout = c.ReadBudget
	}
	if c.Dir != "" && !filepath.IsAbs(c.Dir) {
		if c.Dir, err = filepath.Abs(c.Dir); err != nil {
			return cfg, fmt.Errorf("--cache-dir %q: %w", c.Dir, err)
		}
	}
	cfg.DiskDir = c.Dir
	cfg.DirectWrites = c.DirectDisk
	return cfg, nil
}

// parseSize parses a Kubernetes quantity of at least minimum bytes.
func parseSize(flag, s string, minimum int64) (int64, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a size (want e.g. 512Mi, 20Gi): %w", flag, s, err)
	}
	v, ok := q.AsInt64()
	if !ok || v < minimum {
		return 0, fmt.Errorf("%s %q: want a whole number of bytes, at least %s", flag, s,
			resource.NewQuantity(minimum, resource.BinarySI).String())
	}
	return v, nil
}
