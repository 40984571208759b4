package source

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"k8s.io/klog/v2"
)

// defaultS3Endpoint is used when neither Options nor the URL name one.
const defaultS3Endpoint = "https://s3.amazonaws.com"

// mtimeVersion prefixes the Version of S3 objects that have no ETag (some
// gateways serve files placed on their file system without one):
// "mtime:<Last-Modified as Unix seconds>:<size>". Seconds, because HEAD
// reports Last-Modified in seconds while listings may carry milliseconds.
const mtimeVersion = "mtime:"

// s3Config is what Parse collected for an S3 source.
type s3Config struct {
	bucket, prefix       string // prefix without leading or trailing slash
	endpoint, region     string
	pathStyle            *bool
	accessKey, secretKey string
	transport            http.RoundTripper // nil: newTransport()
}

// s3Source reads objects below a prefix of one bucket.
//
// Every method sends one request per call (List: one per page of keys; Stat
// of a directory: two), with minio-go's own retries turned off
// (MaxRetries 1), so that WithRetry is the only retry policy. minio-go still
// sleeps up to 200 ms after a failed attempt before returning its error.
type s3Source struct {
	client *minio.Client
	core   minio.Core
	bucket string
	prefix string // "" or "some/prefix/"
	id     string
	// maxKeys is the page size of listings; 0 means the server's default
	// (1,000 on AWS). Tests lower it to exercise pagination.
	maxKeys int
}

var _ Source = (*s3Source)(nil)

func newS3(cfg s3Config) (*s3Source, error) {
	ep := cfg.endpoint
	if ep == "" {
		ep = defaultS3Endpoint
	}
	eu, err := url.Parse(ep)
	if err != nil {
		// url.Parse errors quote the input, which may hold credentials.
		return nil, fmt.Errorf("%w: s3 endpoint is not a URL: want http://host[:port] or https://host[:port]", ErrInvalid)
	}
	if (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
		return nil, fmt.Errorf("%w: s3 endpoint %q: want http://host[:port] or https://host[:port]", ErrInvalid, eu.Redacted())
	}
	if (eu.Path != "" && eu.Path != "/") || eu.RawQuery != "" || eu.User != nil || eu.Fragment != "" {
		return nil, fmt.Errorf("%w: s3 endpoint %q: want scheme://host[:port] without path, query or credentials",
			ErrInvalid, eu.Redacted())
	}
	creds, credKind, err := s3Credentials(cfg)
	if err != nil {
		return nil, err
	}
	lookup := minio.BucketLookupAuto
	switch {
	case cfg.pathStyle != nil && *cfg.pathStyle:
		lookup = minio.BucketLookupPath
	case cfg.pathStyle != nil:
		lookup = minio.BucketLookupDNS
	case !s3utils.IsAmazonEndpoint(*eu):
		lookup = minio.BucketLookupPath
	}
	tr := cfg.transport
	if tr == nil {
		tr = newTransport()
	}
	client, err := minio.New(eu.Host, &minio.Options{
		Creds:        creds,
		Secure:       eu.Scheme == "https",
		Transport:    tr,
		Region:       cfg.region,
		BucketLookup: lookup,
		MaxRetries:   1, // WithRetry is the one retry policy
	})
	if err != nil {
		return nil, fmt.Errorf("%w: s3 client for %s: %v", ErrInvalid, eu.Host, err)
	}
	s := &s3Source{
		client: client,
		core:   minio.Core{Client: client},
		bucket: cfg.bucket,
		id:     "s3://" + eu.Host + "/" + cfg.bucket + "/" + cfg.prefix,
	}
	if cfg.prefix != "" {
		s.prefix = cfg.prefix + "/"
	}
	klog.InfoS("Opened S3 source", "id", s.id, "region", cfg.region,
		"pathStyle", lookup == minio.BucketLookupPath, "credentials", credKind)
	return s, nil
}

// s3Credentials picks explicit credentials, else the environment, else the
// AWS shared credentials file, else anonymous access. It returns what kind
// it chose (for logs; never the keys).
func s3Credentials(cfg s3Config) (*credentials.Credentials, string, error) {
	switch {
	case cfg.accessKey != "" && cfg.secretKey != "":
		return credentials.NewStaticV4(cfg.accessKey, cfg.secretKey, ""), "explicit", nil
	case cfg.accessKey != "" || cfg.secretKey != "":
		return nil, "", fmt.Errorf("%w: S3 credentials need both an access key and a secret key", ErrInvalid)
	}
	chain := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{}, // AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE
	})
	// An exhausted chain yields anonymous credentials, but it also reports
	// itself expired forever, so every request would search the
	// environment and read the files again. Resolve once: when nothing is
	// found, use static anonymous credentials.
	v, err := chain.GetWithContext(nil)
	if err != nil || v.SignerType.IsAnonymous() || (v.AccessKeyID == "" && v.SecretAccessKey == "") {
		return credentials.NewStatic("", "", "", credentials.SignatureAnonymous), "anonymous", nil
	}
	kind := "shared credentials file"
	if (os.Getenv("AWS_ACCESS_KEY_ID") != "" || os.Getenv("AWS_ACCESS_KEY") != "") &&
		(os.Getenv("AWS_SECRET_ACCESS_KEY") != "" || os.Getenv("AWS_SECRET_KEY") != "") {
		kind = "environment"
	}
	return chain, kind, nil
}

// newTransport returns the HTTP transport of S3 and HTTP sources: pooled
// connections for many parallel ranged reads, a bounded dial, and no
// transparent compression (it would break byte ranges). Waits for answers
// are bounded by each attempt's deadline (RetryPolicy), not here.
func newTransport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
	}
}

func (s *s3Source) ID() string { return s.id }

func (s *s3Source) key(p string) string { return s.prefix + p }

// dirPrefix is the key prefix of the entries of directory dir.
func (s *s3Source) dirPrefix(dir string) string {
	if dir == "" {
		return s.prefix
	}
	return s.prefix + dir + "/"
}

func (s *s3Source) Stat(ctx context.Context, p string) (Entry, error) {
	if err := checkPath(p); err != nil {
		return Entry{}, err
	}
	if p == "" {
		// The root exists when the bucket does. A one-key listing needs
		// the same permission as List (HEAD bucket would too on AWS).
		if _, err := s.probe(ctx, s.prefix); err != nil {
			return Entry{}, err
		}
		return Entry{IsDir: true}, nil
	}
	info, err := s.client.StatObject(ctx, s.bucket, s.key(p), minio.StatObjectOptions{})
	if err == nil {
		return Entry{
			Name:    baseName(p),
			Size:    info.Size,
			ModTime: info.LastModified,
			Version: objectVersion(info.ETag, info.LastModified, info.Size),
		}, nil
	}
	err = s.wrap("stat", s.key(p), err)
	if !errors.Is(err, ErrNotFound) {
		return Entry{}, err
	}
	found, perr := s.probe(ctx, s.key(p)+"/")
	if perr != nil {
		return Entry{}, perr
	}
	if !found {
		return Entry{}, err
	}
	return Entry{Name: baseName(p), IsDir: true}, nil
}

// probe reports whether any key starts with pfx (one request, max-keys 1).
func (s *s3Source) probe(ctx context.Context, pfx string) (bool, error) {
	noOwner := false
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{
		Prefix:     pfx,
		MaxKeys:    1,
		FetchOwner: &noOwner,
	}) {
		if obj.Err != nil {
			return false, s.wrap("list", pfx, obj.Err)
		}
		return true, nil
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("s3 list s3://%s/%s: %w", s.bucket, pfx, err)
	}
	return false, nil
}

func (s *s3Source) ReadAt(ctx context.Context, p, version string, buf []byte, off int64) error {
	if err := checkPath(p); err != nil {
		return err
	}
	if p == "" || off < 0 {
		return fmt.Errorf("%w: read %q at offset %d", ErrInvalid, p, off)
	}
	if len(buf) == 0 {
		return nil
	}
	key := s.key(p)
	end := off + int64(len(buf)) - 1
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, end); err != nil {
		return fmt.Errorf("%w: s3 read s3://%s/%s: %v", ErrInvalid, s.bucket, key, err)
	}
	// An ETag version is checked by the server (If-Match). An mtime
	// version is checked here against the response's Last-Modified and
	// size: If-Unmodified-Since is unreliable with gateways that compare
	// it with sub-second file times.
	wantMtime, wantSize, byMtime := parseMtimeVersion(version)
	if version != "" && !byMtime {
		_ = opts.SetMatchETag(version)
	}
	body, info, hdr, err := s.core.GetObject(ctx, s.bucket, key, opts)
	if err != nil {
		return s.wrap("read", key, err)
	}
	defer body.Close()

	where := fmt.Sprintf("s3 read s3://%s/%s [%d, %d]", s.bucket, key, off, end)
	first, last, total, ok := parseContentRange(hdr.Get("Content-Range"))
	switch {
	case !ok:
		return fmt.Errorf("%s: response has no valid Content-Range (%q)", where, hdr.Get("Content-Range"))
	case byMtime && (total != wantSize || info.LastModified.Unix() != wantMtime):
		return fmt.Errorf("%s: object now has %d bytes, mtime %d; was %d, %d: %w",
			where, total, info.LastModified.Unix(), wantSize, wantMtime, ErrVersionChanged)
	case total >= 0 && end >= total:
		return fmt.Errorf("%s: object has %d bytes: %w", where, total, ErrOutOfRange)
	case first != off || last != end:
		return fmt.Errorf("%s: server sent range %d-%d", where, first, last)
	case version != "" && !byMtime && info.ETag != "" && info.ETag != version:
		return fmt.Errorf("%s: ETag is now %q, was %q: %w", where, info.ETag, version, ErrVersionChanged)
	}
	if n, err := ReadFull(ctx, body, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%s: %w", where, partial(n, err))
	}
	return nil
}

// wrap classifies an S3 error with the sentinel errors. key is the object
// key or listing prefix the request was about.
func (s *s3Source) wrap(op, key string, err error) error {
	where := fmt.Sprintf("s3 %s s3://%s/%s", op, s.bucket, key)
	var er minio.ErrorResponse
	if !errors.As(err, &er) {
		return fmt.Errorf("%s: %w", where, err)
	}
	var sentinel error
	switch {
	case er.Code == minio.AccessDenied || er.Code == "InvalidAccessKeyId" || er.Code == "SignatureDoesNotMatch" ||
		er.Code == "ExpiredToken" || er.Code == "InvalidToken" || er.Code == "AllAccessDisabled" ||
		er.Code == "XAdminUserNotFound": // versitygw's (404) answer to an unknown access key
		sentinel = ErrPermission
	case er.Code == minio.NoSuchBucket:
		return fmt.Errorf("%s: bucket %q does not exist: %w", where, s.bucket, ErrNotFound)
	case er.Code == minio.NoSuchKey || er.Code == "NotFound" || er.StatusCode == http.StatusNotFound:
		sentinel = ErrNotFound
	case er.StatusCode == http.StatusForbidden || er.StatusCode == http.StatusUnauthorized:
		sentinel = ErrPermission
	case er.Code == minio.PreconditionFailed || er.StatusCode == http.StatusPreconditionFailed:
		sentinel = ErrVersionChanged
	case er.Code == minio.InvalidRange || er.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		sentinel = ErrOutOfRange
	case er.Code == minio.InvalidBucketName || er.Code == minio.XMinioInvalidObjectName ||
		er.Code == minio.InvalidArgument:
		sentinel = ErrInvalid
	case er.Code == "SlowDown" || er.Code == "SlowDownRead" || er.Code == "TooManyRequests" ||
		er.Code == "RequestLimitExceeded" || er.Code == "Throttling" || er.Code == "ServiceUnavailable" ||
		er.StatusCode == http.StatusTooManyRequests || er.StatusCode == http.StatusServiceUnavailable:
		return fmt.Errorf("%s: %w (%w)", where, ErrThrottled, err)
	default:
		// InternalError, RequestTimeout, other 5xx and whatever else:
		// transient.
		return fmt.Errorf("%s: %w", where, err)
	}
	return fmt.Errorf("%s: %w (%w)", where, sentinel, err)
}

// objectVersion is the Version of an S3 object: its ETag, or when the
// server has none, mtime and size.
func objectVersion(etag string, mtime time.Time, size int64) string {
	if etag != "" {
		return etag
	}
	return mtimeVersion + strconv.FormatInt(mtime.Unix(), 10) + ":" + strconv.FormatInt(size, 10)
}

// parseMtimeVersion returns the Unix seconds and size of an mtime version.
func parseMtimeVersion(v string) (mtime, size int64, ok bool) {
	rest, ok := strings.CutPrefix(v, mtimeVersion)
	if !ok {
		return 0, 0, false
	}
	secs, sz, ok := strings.Cut(rest, ":")
	if !ok {
		return 0, 0, false
	}
	var err1, err2 error
	mtime, err1 = strconv.ParseInt(secs, 10, 64)
	size, err2 = strconv.ParseInt(sz, 10, 64)
	return mtime, size, err1 == nil && err2 == nil
}

// parseContentRange parses "bytes FIRST-LAST/TOTAL" (TOTAL may be "*",
// reported as -1).
func parseContentRange(h string) (first, last, total int64, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimSpace(h), "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err error
	if first, err = strconv.ParseInt(a, 10, 64); err != nil {
		return 0, 0, 0, false
	}
	if last, err = strconv.ParseInt(b, 10, 64); err != nil {
		return 0, 0, 0, false
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil {
			return 0, 0, 0, false
		}
	}
	if first < 0 || last < first || (total >= 0 && last >= total) {
		return 0, 0, 0, false
	}
	return first, last, total, true
}
