package source

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// Options configure the sources Parse opens. The zero value is valid.
type Options struct {
	// S3Endpoint is the S3 service's base URL, e.g. http://127.0.0.1:9000.
	// Empty means AWS (https://s3.amazonaws.com). The URL query parameter
	// endpoint overrides it.
	S3Endpoint string
	// S3Region is the bucket's region. Empty lets the client discover it
	// (one GetBucketLocation request per bucket). The URL query parameter
	// region overrides it.
	S3Region string
	// S3PathStyle forces path-style (true) or virtual-host-style (false)
	// bucket addressing. nil chooses automatically: path style for every
	// endpoint that is not AWS. The URL query parameter pathStyle
	// overrides it.
	S3PathStyle *bool
	// AccessKey and SecretKey are explicit S3 credentials. When both are
	// empty the credentials come from the environment (AWS_ACCESS_KEY_ID,
	// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), else from the AWS shared
	// credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials,
	// profile AWS_PROFILE), else requests are anonymous.
	AccessKey, SecretKey string
	// HTTPClient, when set, sends the requests of http(s) sources; its
	// Transport (if any) is also used for S3. nil means a tuned default.
	HTTPClient *http.Client
}

// s3Query names the query parameters an s3:// URL accepts.
const s3Query = "endpoint, region or pathStyle"

// Parse opens the dataset at rawURL:
//
//	s3://bucket[/prefix][?endpoint=http://host:9000&region=r&pathStyle=true]
//	file:///absolute/path (an existing directory)
//	http://host/path, https://host/path (a single object)
//
// Malformed URLs give an error wrapping ErrInvalid. Parse does not contact
// S3 or HTTP origins; the first List/Stat/ReadAt does. Wrap the result with
// WithRetry to retry transient failures.
func Parse(rawURL string, opts Options) (Source, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse errors quote the input, which may hold credentials.
		return nil, fmt.Errorf("%w: malformed source URL", ErrInvalid)
	}
	switch strings.ToLower(u.Scheme) {
	case "s3":
		return parseS3(u, opts)
	case "file":
		return parseFile(u)
	case "http", "https":
		return parseHTTP(u, opts)
	case "":
		// Redacted hides a password only; the query may hold a presigned
		// URL's signature, so it is left out too.
		shown := *u
		shown.RawQuery, shown.ForceQuery = "", false
		return nil, fmt.Errorf("%w: source URL %q has no scheme; want s3, file, http or https",
			ErrInvalid, shown.Redacted())
	default:
		return nil, fmt.Errorf("%w: unknown scheme %q; want s3, file, http or https", ErrInvalid, u.Scheme)
	}
}

func parseS3(u *url.URL, opts Options) (Source, error) {
	if u.User != nil {
		return nil, fmt.Errorf("%w: s3 URL must not carry credentials; use the environment, "+
			"a credentials file or a Secret", ErrInvalid)
	}
	bucket := u.Host
	if bucket == "" {
		return nil, fmt.Errorf("%w: s3 URL needs a bucket: s3://BUCKET/prefix", ErrInvalid)
	}
	if err := s3utils.CheckValidBucketName(bucket); err != nil {
		return nil, fmt.Errorf("%w: s3 bucket %q: %v", ErrInvalid, bucket, err)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("%w: s3 URL must not have a fragment (#%s)", ErrInvalid, u.Fragment)
	}
	prefix := strings.Trim(u.Path, "/")
	if err := checkPath(prefix); err != nil {
		return nil, fmt.Errorf("%w: s3 prefix %q: must be slash-separated names without "+
			"empty, \".\" or \"..\" elements", ErrInvalid, prefix)
	}

	cfg := s3Config{
		bucket:    bucket,
		prefix:    prefix,
		endpoint:  opts.S3Endpoint,
		region:    opts.S3Region,
		pathStyle: opts.S3PathStyle,
		accessKey: opts.AccessKey,
		secretKey: opts.SecretKey,
	}
	if opts.HTTPClient != nil {
		cfg.transport = opts.HTTPClient.Transport
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w: s3 URL query: %v", ErrInvalid, err)
	}
	for k, vs := range q {
		if len(vs) != 1 {
			return nil, fmt.Errorf("%w: s3 URL query parameter %q given %d times", ErrInvalid, k, len(vs))
		}
		v := vs[0]
		switch k {
		case "endpoint":
			cfg.endpoint = v
		case "region":
			cfg.region = v
		case "pathStyle":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("%w: s3 URL query parameter pathStyle=%q: want true or false", ErrInvalid, v)
			}
			cfg.pathStyle = &b
		default:
			return nil, fmt.Errorf("%w: unknown s3 URL query parameter %q; want %s",
				ErrInvalid, k, s3Query)
		}
	}
	return newS3(cfg)
}

func parseFile(u *url.URL) (Source, error) {
	if u.Host != "" && u.Host != "localhost" {
		return nil, fmt.Errorf("%w: file URL must name an absolute path: file:///abs/path "+
			"(got host %q; a relative path is not allowed)", ErrInvalid, u.Host)
	}
	if u.Opaque != "" {
		return nil, fmt.Errorf("%w: file URL must name an absolute path: file:///abs/path", ErrInvalid)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: file URL must not have a query or fragment", ErrInvalid)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: file URL must not carry a user", ErrInvalid)
	}
	root := filepath.FromSlash(u.Path)
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("%w: file URL must name an absolute path: file:///abs/path", ErrInvalid)
	}
	return newFile(filepath.Clean(root))
}

func parseHTTP(u *url.URL, opts Options) (Source, error) {
	if u.Host == "" {
		return nil, fmt.Errorf("%w: %s URL needs a host: %s://HOST/path", ErrInvalid, u.Scheme, u.Scheme)
	}
	return newHTTP(u, opts.HTTPClient)
}

// checkPath validates a dataset path: "" (the root) or slash-separated
// names, none of them empty, "." or "..", without a leading or trailing
// slash and without NUL bytes.
func checkPath(p string) error {
	if p == "" {
		return nil
	}
	if strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("%w: path contains a NUL byte", ErrInvalid)
	}
	for _, el := range strings.Split(p, "/") {
		switch el {
		case "":
			if strings.HasPrefix(p, "/") {
				return fmt.Errorf("%w: path %q is absolute; want a path relative to the dataset root", ErrInvalid, p)
			}
			return fmt.Errorf("%w: path %q has an empty element", ErrInvalid, p)
		case ".", "..":
			return fmt.Errorf("%w: path %q has a %q element", ErrInvalid, p, el)
		}
	}
	return nil
}

// MaxNameLen is the longest entry name shown (Linux's NAME_MAX): a longer
// one breaks the readers of a directory (FUSE fails a whole readdir with
// EIO past 1,024 bytes).
const MaxNameLen = 255

// ValidName reports whether name can be a directory entry: one path
// element, not "." or "..", no NUL, at most MaxNameLen bytes. Listings
// skip objects whose names are not, so nothing can name a file outside
// its directory.
func ValidName(name string) bool {
	return name != "" && name != "." && name != ".." && len(name) <= MaxNameLen &&
		!strings.ContainsRune(name, '/') && !strings.ContainsRune(name, 0)
}

// baseName returns the last element of a checked path ("" for the root).
func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// statDir checks that dir is an existing directory (for file sources).
func statDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%w: file source %s: %v", ErrInvalid, dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: file source %s is not a directory", ErrInvalid, dir)
	}
	return nil
}
