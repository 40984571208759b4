package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// putTree uploads tr below prefix ("" or "p/") with a few parallel PUTs.
func putTree(t *testing.T, srv *s3server.Server, bucket, prefix string, tr tree) {
	t.Helper()
	ctx := testCtx(t)
	type item struct {
		key  string
		data []byte
	}
	work := make(chan item)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				_, err := srv.Client().PutObject(ctx, bucket, it.key, bytes.NewReader(it.data),
					int64(len(it.data)), minio.PutObjectOptions{})
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("put %s: %w", it.key, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	for p, data := range tr {
		work <- item{prefix + p, data}
	}
	close(work)
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
}

func openS3(t *testing.T, srv *s3server.Server, bucketAndPrefix string) *s3Source {
	t.Helper()
	src, err := Parse("s3://"+bucketAndPrefix+"?endpoint="+srv.Endpoint, Options{
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, S3Region: "us-east-1",
	})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return src.(*s3Source)
}

func TestS3Conformance(t *testing.T) {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	tr := testTree()
	putTree(t, srv, "data", "ds/v1/", tr)
	// Neighbours that must not show: a sibling prefix sharing the name's
	// start and keys outside the prefix; and "folder" marker objects that
	// consoles create, which must not appear as entries.
	srv.Put(t, "data", "ds/v1x/not-mine", []byte("no"))
	srv.Put(t, "data", "other/not-mine", []byte("no"))
	srv.Put(t, "data", "ds/v1/a/", nil)
	srv.Put(t, "data", "ds/v1/a/b/", nil)

	src := openS3(t, srv, "data/ds/v1")
	if want := "s3://" + strings.TrimPrefix(srv.Endpoint, "http://") + "/data/ds/v1"; src.ID() != want {
		t.Errorf("ID() = %q, want %q", src.ID(), want)
	}
	t.Run("default pages", func(t *testing.T) { checkSource(t, src, tr) })
	t.Run("pages of 100 keys", func(t *testing.T) {
		small := openS3(t, srv, "data/ds/v1")
		small.maxKeys = 100
		got, err := small.List(testCtx(t), "many")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != manyFiles+1 || got[0].Name != "f0000" || got[manyFiles-1].Name != fmt.Sprintf("f%04d", manyFiles-1) ||
			got[manyFiles].Name != "sub" || !got[manyFiles].IsDir {
			t.Fatalf("List(many) with 100-key pages: %d entries %v", len(got), names(got))
		}
		var pages [][]Entry
		if err := small.ListPages(testCtx(t), "many", func(p []Entry) error { pages = append(pages, p); return nil }); err != nil {
			t.Fatal(err)
		}
		var joined []Entry
		for _, p := range pages {
			if len(p) > 100 {
				t.Fatalf("a page of %d entries with 100-key pages", len(p))
			}
			joined = append(joined, p...)
		}
		sort.Slice(joined, func(i, j int) bool { return joined[i].Name < joined[j].Name })
		if len(pages) < manyFiles/100 || !reflect.DeepEqual(joined, got) {
			t.Fatalf("ListPages(many): %d pages of %d entries in all; want at least %d pages holding List's %d entries",
				len(pages), len(joined), manyFiles/100, len(got))
		}
	})
}

func TestS3BucketRoot(t *testing.T) {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "root-data")
	tr := tree{"x.bin": testutil.RandBytes(1<<20+3, 11), "d/y": []byte("y"), "d/e/z": {}, "sp ace/ü": []byte("ü")}
	putTree(t, srv, "root-data", "", tr)
	checkSource(t, openS3(t, srv, "root-data"), tr)
}

func TestS3Directories(t *testing.T) {
	srv := s3server.Start(t)
	ctx := testCtx(t)
	srv.CreateBucket(t, "empty-bucket")
	srv.CreateBucket(t, "marked")
	srv.Put(t, "marked", "only-marker/", nil)
	srv.Put(t, "marked", "file", []byte("file"))

	tests := []struct {
		name    string
		source  string
		dir     string
		want    []string // nil with wantErr
		wantErr error
		errText string
	}{
		{name: "empty bucket root", source: "empty-bucket", dir: "", want: []string{}},
		{name: "empty prefix root", source: "empty-bucket/some/prefix", dir: "", want: []string{}},
		{name: "missing dir", source: "empty-bucket", dir: "nope", wantErr: ErrNotFound},
		{name: "marker-only dir is empty", source: "marked", dir: "only-marker", want: []string{}},
		{name: "root with marker dir", source: "marked", dir: "", want: []string{"file", "only-marker/"}},
		{name: "missing bucket", source: "no-such-bucket", dir: "", wantErr: ErrNotFound, errText: `bucket "no-such-bucket" does not exist`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := openS3(t, srv, tc.source)
			got, err := src.List(ctx, tc.dir)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(fmt.Sprint(err), tc.errText) {
					t.Fatalf("List(%q) = %v, %v; want %v containing %q", tc.dir, names(got), err, tc.wantErr, tc.errText)
				}
				if _, err := src.Stat(ctx, tc.dir); !errors.Is(err, tc.wantErr) {
					t.Fatalf("Stat(%q) = %v, want %v", tc.dir, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("List(%q): %v", tc.dir, err)
			}
			if g := names(got); strings.Join(g, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("List(%q) = %v, want %v", tc.dir, g, tc.want)
			}
			if e, err := src.Stat(ctx, tc.dir); err != nil || !e.IsDir {
				t.Fatalf("Stat(%q) = %+v, %v; want a directory", tc.dir, e, err)
			}
		})
	}
}

func TestS3VersionChangedAndDeleted(t *testing.T) {
	srv := s3server.Start(t)
	ctx := testCtx(t)
	srv.CreateBucket(t, "mut")
	srv.Put(t, "mut", "obj", []byte("version one"))
	src := openS3(t, srv, "mut")
	v1, err := src.Stat(ctx, "obj")
	if err != nil {
		t.Fatal(err)
	}
	srv.Put(t, "mut", "obj", []byte("version two"))
	buf := make([]byte, 7)
	if err := src.ReadAt(ctx, "obj", v1.Version, buf, 0); !errors.Is(err, ErrVersionChanged) {
		t.Fatalf("ReadAt of the old version = %v; want ErrVersionChanged", err)
	}
	v2, err := src.Stat(ctx, "obj")
	if err != nil || v2.Version == v1.Version {
		t.Fatalf("Stat = %+v, %v; want a new version (old %q)", v2, err, v1.Version)
	}
	if err := src.ReadAt(ctx, "obj", v2.Version, buf, 4); err != nil || string(buf) != "ion two" {
		t.Fatalf("ReadAt of the new version = %q, %v", buf, err)
	}
	// No version: no check.
	if err := src.ReadAt(ctx, "obj", "", buf, 0); err != nil || string(buf) != "version" {
		t.Fatalf("ReadAt without version = %q, %v", buf, err)
	}
	srv.Delete(t, "mut", "obj")
	if err := src.ReadAt(ctx, "obj", v2.Version, buf, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadAt after delete = %v; want ErrNotFound", err)
	}
	if _, err := src.Stat(ctx, "obj"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after delete = %v; want ErrNotFound", err)
	}
}

func TestS3FilesWithoutETag(t *testing.T) {
	// Files placed in the gateway's directory behind its back have no
	// stored ETag; versitygw then sends none and Version falls back to
	// mtime and size.
	srv := s3server.Start(t)
	ctx := testCtx(t)
	srv.CreateBucket(t, "raw")
	if err := os.WriteFile(filepath.Join(srv.Root, "raw", "placed"), []byte("placed by hand"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := openS3(t, srv, "raw")
	e, err := src.Stat(ctx, "placed")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Version of a file without stored ETag: %q", e.Version)
	buf := make([]byte, 6)
	if err := src.ReadAt(ctx, "placed", e.Version, buf, 0); err != nil || string(buf) != "placed" {
		t.Fatalf("ReadAt = %q, %v", buf, err)
	}
	list, err := src.List(ctx, "")
	if err != nil || len(list) != 1 || list[0].Version != e.Version {
		t.Fatalf("List = %+v, %v; want one entry with Version %q", list, err, e.Version)
	}
	if err := os.WriteFile(filepath.Join(srv.Root, "raw", "placed"), []byte("changed by hand"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := src.ReadAt(ctx, "placed", e.Version, buf, 0); !errors.Is(err, ErrVersionChanged) {
		t.Fatalf("ReadAt after the file changed = %q, %v; want ErrVersionChanged", buf, err)
	}
}

func TestS3Credentials(t *testing.T) {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "private")
	srv.Put(t, "private", "f", []byte("private data"))
	srv.CreateBucket(t, "public")
	srv.Put(t, "public", "f", []byte("public data"))
	srv.SetPublicRead(t, "public")

	home := t.TempDir()
	credFile := filepath.Join(home, "credentials")
	err := os.WriteFile(credFile, []byte(fmt.Sprintf("[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"+
		"[sluice]\naws_access_key_id = %s\naws_secret_access_key = %s\n", srv.AccessKey, srv.SecretKey)), 0o600)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		env     map[string]string
		bucket  string
		wantErr error
	}{
		{name: "environment", bucket: "private",
			env: map[string]string{"AWS_ACCESS_KEY_ID": srv.AccessKey, "AWS_SECRET_ACCESS_KEY": srv.SecretKey}},
		{name: "credentials file profile", bucket: "private",
			env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": credFile, "AWS_PROFILE": "sluice"}},
		{name: "wrong keys in file", bucket: "private", wantErr: ErrPermission,
			env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": credFile}},
		{name: "anonymous on private bucket", bucket: "private", wantErr: ErrPermission},
		{name: "anonymous on public bucket", bucket: "public"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY",
				"AWS_SECRET_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"} {
				t.Setenv(k, "")
			}
			t.Setenv("HOME", home)
			t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(home, "none"))
			t.Setenv("AWS_CONFIG_FILE", filepath.Join(home, "none"))
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			// No region: the client asks for the bucket's location.
			src, err := Parse("s3://"+tc.bucket+"?endpoint="+srv.Endpoint, Options{})
			if err != nil {
				t.Fatal(err)
			}
			ctx := testCtx(t)
			e, serr := src.Stat(ctx, "f")
			_, lerr := src.List(ctx, "")
			if tc.wantErr != nil {
				if !errors.Is(serr, tc.wantErr) || !errors.Is(lerr, tc.wantErr) {
					t.Fatalf("Stat: %v; List: %v; want %v", serr, lerr, tc.wantErr)
				}
				return
			}
			if serr != nil || lerr != nil {
				t.Fatalf("Stat: %v; List: %v", serr, lerr)
			}
			buf := make([]byte, e.Size)
			if err := src.ReadAt(ctx, "f", e.Version, buf, 0); err != nil || !strings.HasSuffix(string(buf), " data") {
				t.Fatalf("ReadAt = %q, %v", buf, err)
			}
		})
	}
}

func TestS3Cancelled(t *testing.T) {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "ctx")
	srv.Put(t, "ctx", "f", []byte("data"))
	src := openS3(t, srv, "ctx")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := src.List(ctx, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("List with a cancelled context = %v", err)
	}
	if err := src.ReadAt(ctx, "f", "", make([]byte, 1), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadAt with a cancelled context = %v", err)
	}
}
