package source

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Cases versitygw cannot produce (throttling, server errors, broken
// responses, keys that are both an object and a prefix) are checked against
// canned responses. Everything else is tested against the real gateway.

func s3Canned(t *testing.T, h http.HandlerFunc) *s3Source {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	src, err := Parse("s3://bkt/pre?endpoint="+srv.URL, Options{AccessKey: "ak", SecretKey: "sk", S3Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	return src.(*s3Source)
}

func s3Error(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>canned %s</Message></Error>`, code, code)
}

func TestS3ReadErrors(t *testing.T) {
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		want      error // nil: any transient error
		permanent bool
	}{
		{"slow down", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 503, "SlowDown") }, nil, false},
		{"internal error", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 500, "InternalError") }, nil, false},
		{"too many requests", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 429, "TooManyRequests") }, nil, false},
		{"request timeout", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 400, "RequestTimeout") }, nil, false},
		{"access denied", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 403, "AccessDenied") }, ErrPermission, true},
		{"bad signature", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 403, "SignatureDoesNotMatch") }, ErrPermission, true},
		{"no such key", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 404, "NoSuchKey") }, ErrNotFound, true},
		{"no such bucket", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 404, "NoSuchBucket") }, ErrNotFound, true},
		{"precondition", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 412, "PreconditionFailed") }, ErrVersionChanged, true},
		{"invalid range", func(w http.ResponseWriter, r *http.Request) { s3Error(w, 416, "InvalidRange") }, ErrOutOfRange, true},
		{"short body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-9/100")
			w.Header().Set("Content-Length", "10")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = io.WriteString(w, "short")
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		}, io.ErrUnexpectedEOF, false},
		{"wrong range", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 5-14/100")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = io.WriteString(w, "0123456789")
		}, nil, false},
		{"clamped range past the end", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-3/4")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = io.WriteString(w, "0123")
		}, ErrOutOfRange, true},
		{"no content range", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "0123456789")
		}, nil, false},
		{"other etag", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"other"`)
			w.Header().Set("Content-Range", "bytes 0-9/100")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = io.WriteString(w, "0123456789")
		}, ErrVersionChanged, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var gotRange, gotIfMatch string
			src := s3Canned(t, func(w http.ResponseWriter, r *http.Request) {
				gotRange, gotIfMatch = r.Header.Get("Range"), r.Header.Get("If-Match")
				w.Header().Set("Last-Modified", "Tue, 02 Jan 2024 03:04:05 GMT") // minio-go needs it
				tc.handler(w, r)
			})
			err := src.ReadAt(testCtx(t), "obj", "etag1", make([]byte, 10), 0)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if IsPermanent(err) != tc.permanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, !tc.permanent, tc.permanent)
			}
			if gotRange != "bytes=0-9" || gotIfMatch != `"etag1"` {
				t.Errorf("request had Range %q, If-Match %q", gotRange, gotIfMatch)
			}
		})
	}
}

func TestS3ListCanned(t *testing.T) {
	listing := `<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult><Name>bkt</Name><Prefix>pre/</Prefix><KeyCount>5</KeyCount><MaxKeys>1000</MaxKeys>
<Delimiter>/</Delimiter><IsTruncated>false</IsTruncated>
<Contents><Key>pre/both</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"e1"</ETag><Size>4</Size></Contents>
<Contents><Key>pre/</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"m"</ETag><Size>0</Size></Contents>
<Contents><Key>pre/a</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"e2"</ETag><Size>7</Size></Contents>
<CommonPrefixes><Prefix>pre/both/</Prefix></CommonPrefixes>
<CommonPrefixes><Prefix>pre//</Prefix></CommonPrefixes>
<CommonPrefixes><Prefix>pre/../</Prefix></CommonPrefixes>
<CommonPrefixes><Prefix>pre/0dir/</Prefix></CommonPrefixes>
<Contents><Key>pre/.</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"d"</ETag><Size>1</Size></Contents>
<Contents><Key>pre/x/../../y</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"t"</ETag><Size>1</Size></Contents>
<Contents><Key>pre/` + strings.Repeat("n", 256) + `</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"l"</ETag><Size>1</Size></Contents>
</ListBucketResult>`
	src := s3Canned(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("list-type") != "2" || r.URL.Query().Get("delimiter") != "/" ||
			r.URL.Query().Get("prefix") != "pre/" {
			t.Errorf("unexpected request %s", r.URL)
		}
		w.Header().Set("Content-Type", "application/xml")
		_, _ = io.WriteString(w, listing)
	})
	got, err := src.List(testCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	// Sorted; the marker "pre/" and unrepresentable names are left out;
	// the object "both" wins over the prefix "both/".
	if g := strings.Join(names(got), ","); g != "0dir/,a,both" {
		t.Fatalf("List = %s, want 0dir/,a,both", g)
	}
	if b := got[2]; b.IsDir || b.Size != 4 || b.Version != "e1" || b.ModTime.IsZero() {
		t.Errorf("entry both = %+v", b)
	}
}
