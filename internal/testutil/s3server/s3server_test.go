package s3server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

func TestServer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sidecar bool
	}{{"default", false}, {"sidecar metadata", true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, tc.sidecar)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s.CreateBucket(t, "bucket-one")
			data := bytes.Repeat([]byte("sluice"), 1000)
			s.Put(t, "bucket-one", "dir/key", data)
			s.Put(t, "bucket-one", "empty", nil)

			obj, err := s.Client().GetObject(ctx, "bucket-one", "dir/key", minio.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(obj)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("GET = %d bytes, %v", len(got), err)
			}
			info, err := s.Client().StatObject(ctx, "bucket-one", "empty", minio.StatObjectOptions{})
			if err != nil || info.Size != 0 || info.ETag == "" {
				t.Fatalf("stat empty = %+v, %v", info, err)
			}
			s.Delete(t, "bucket-one", "dir/key")
			if _, err := s.Client().StatObject(ctx, "bucket-one", "dir/key", minio.StatObjectOptions{}); err == nil {
				t.Fatal("object still there after Delete")
			}

			s.Stop()
			s.Stop() // idempotent
			if resp, err := http.Get(s.Endpoint); err == nil {
				resp.Body.Close()
				t.Fatal("gateway still answers after Stop")
			}
		})
	}
}
