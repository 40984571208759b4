package source

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "plain-file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// No credentials from the environment in these cases.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	yes := true

	tests := []struct {
		name    string
		url     string
		opts    Options
		wantID  string
		wantErr string // fragment of the error text; the error must wrap ErrInvalid
	}{
		{name: "s3 bucket only", url: "s3://my-bucket", wantID: "s3://s3.amazonaws.com/my-bucket/"},
		{name: "s3 prefix", url: "s3://my-bucket/data/set/", wantID: "s3://s3.amazonaws.com/my-bucket/data/set"},
		{name: "s3 endpoint option", url: "s3://b-1/p", opts: Options{S3Endpoint: "http://127.0.0.1:9000"},
			wantID: "s3://127.0.0.1:9000/b-1/p"},
		{name: "s3 query overrides options", url: "s3://b-1/p?endpoint=http://minio:9000&region=eu-1&pathStyle=true",
			opts: Options{S3Endpoint: "http://other:1", S3PathStyle: &yes}, wantID: "s3://minio:9000/b-1/p"},
		{name: "s3 explicit keys", url: "s3://b-1", opts: Options{AccessKey: "ak", SecretKey: "sk"},
			wantID: "s3://s3.amazonaws.com/b-1/"},
		{name: "file", url: "file://" + filepath.ToSlash(dir), wantID: "file://" + filepath.ToSlash(dir)},
		{name: "file localhost", url: "file://localhost" + filepath.ToSlash(dir) + "/", wantID: "file://" + filepath.ToSlash(dir)},
		{name: "http", url: "http://example.com/models/w.bin", wantID: "http://example.com/models/w.bin"},
		{name: "https strips query and user", url: "https://user:pw@example.com/a/b.bin?X-Amz-Signature=secret#frag",
			wantID: "https://example.com/a/b.bin"},

		{name: "unknown scheme", url: "ftp://host/x", wantErr: `unknown scheme "ftp"; want s3, file, http or https`},
		{name: "no scheme", url: "/data/set", wantErr: "has no scheme; want s3, file, http or https"},
		{name: "s3 no bucket", url: "s3:///prefix", wantErr: "s3 URL needs a bucket: s3://BUCKET/prefix"},
		{name: "s3 bad bucket", url: "s3://B_/x", wantErr: `s3 bucket "B_"`},
		{name: "s3 unknown query", url: "s3://bkt/p?foo=1", wantErr: `unknown s3 URL query parameter "foo"; want endpoint, region or pathStyle`},
		{name: "s3 bad pathStyle", url: "s3://bkt?pathStyle=maybe", wantErr: `pathStyle="maybe": want true or false`},
		{name: "s3 repeated query", url: "s3://bkt?region=a&region=b", wantErr: `"region" given 2 times`},
		{name: "s3 bad endpoint", url: "s3://bkt?endpoint=ftp://x", wantErr: `s3 endpoint "ftp://x"`},
		{name: "s3 endpoint with path", url: "s3://bkt", opts: Options{S3Endpoint: "http://h:9000/sub"},
			wantErr: "without path, query or credentials"},
		{name: "s3 credentials in URL", url: "s3://ak:sk@bkt/p", wantErr: "must not carry credentials"},
		{name: "s3 half credentials", url: "s3://bkt", opts: Options{AccessKey: "ak"},
			wantErr: "need both an access key and a secret key"},
		{name: "s3 dot-dot prefix", url: "s3://bkt/a/../b", wantErr: `s3 prefix "a/../b"`},
		{name: "file relative", url: "file://relative/path", wantErr: "file URL must name an absolute path"},
		{name: "file opaque", url: "file:relative", wantErr: "file URL must name an absolute path"},
		{name: "file missing", url: "file://" + filepath.ToSlash(dir) + "/missing", wantErr: "no such file or directory"},
		{name: "file not a directory", url: "file://" + filepath.ToSlash(file), wantErr: "is not a directory"},
		{name: "file query", url: "file://" + filepath.ToSlash(dir) + "?x=1", wantErr: "must not have a query"},
		{name: "http no host", url: "http:///path", wantErr: "http URL needs a host"},
		{name: "malformed", url: "s3://bkt/%zz", wantErr: "malformed source URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, err := Parse(tc.url, tc.opts)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse(%q) = %s, want error %q", tc.url, src.ID(), tc.wantErr)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %q does not wrap ErrInvalid", err)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q does not contain %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "sk") && strings.Contains(tc.url, ":sk@") {
					t.Errorf("error %q leaks the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.url, err)
			}
			if src.ID() != tc.wantID {
				t.Errorf("ID() = %q, want %q", src.ID(), tc.wantID)
			}
		})
	}
}

func TestParseS3Options(t *testing.T) {
	no, yes := false, true
	tests := []struct {
		name          string
		url           string
		opts          Options
		wantPathStyle bool
		wantRegion    string
	}{
		{name: "aws auto is virtual host", url: "s3://bkt"},
		{name: "other endpoint auto is path style", url: "s3://bkt", opts: Options{S3Endpoint: "http://127.0.0.1:9000"},
			wantPathStyle: true},
		{name: "forced off", url: "s3://bkt", opts: Options{S3Endpoint: "http://127.0.0.1:9000", S3PathStyle: &no}},
		{name: "forced on for aws", url: "s3://bkt", opts: Options{S3PathStyle: &yes}, wantPathStyle: true},
		{name: "query wins", url: "s3://bkt?pathStyle=false&region=r1", opts: Options{S3PathStyle: &yes, S3Region: "r0"},
			wantRegion: "r1"},
		{name: "region option", url: "s3://bkt", opts: Options{S3Region: "r0"}, wantRegion: "r0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Presigning needs keys, and a region to stay off the network.
			tc.opts.AccessKey, tc.opts.SecretKey = "ak", "sk"
			if tc.opts.S3Region == "" {
				tc.opts.S3Region = "us-east-1"
			}
			src, err := Parse(tc.url, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			// The client's addressing is observable through a presigned URL.
			pu, err := src.(*s3Source).client.PresignedGetObject(testCtx(t), "bkt", "k", 60e9, nil)
			if err != nil {
				t.Fatal(err)
			}
			gotPath := strings.HasPrefix(pu.Path, "/bkt/")
			if gotPath != tc.wantPathStyle {
				t.Errorf("presigned URL %s: path style %v, want %v", pu.Redacted(), gotPath, tc.wantPathStyle)
			}
			if tc.wantRegion != "" && !strings.Contains(pu.RawQuery, tc.wantRegion) {
				t.Errorf("presigned URL %s is not for region %q", pu.Redacted(), tc.wantRegion)
			}
		})
	}
}

func TestCheckPath(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
	}{
		{"", true}, {"a", true}, {"a/b c/ü", true}, {"...", true}, {"a..b", true},
		{"/a", false}, {"a/", false}, {"a//b", false}, {".", false}, {"..", false},
		{"a/./b", false}, {"a/../b", false}, {"a\x00b", false},
	}
	for _, tc := range tests {
		if err := checkPath(tc.path); (err == nil) != tc.ok {
			t.Errorf("checkPath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
		} else if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("checkPath(%q) = %v, not ErrInvalid", tc.path, err)
		}
	}
}
