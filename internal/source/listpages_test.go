package source

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// A paged listing through the retry wrapper, from versitygw behind a proxy
// that holds every request: one that keeps delivering pages is not cut
// off however long it takes in all (here longer than one attempt's List
// and the whole Budget), and one whose pages stop coming fails, with the
// deadline as its cause.
func TestListPagesIsBoundedByProgress(t *testing.T) {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	const n = 50
	for i := range n {
		srv.Put(t, "data", fmt.Sprintf("many/f%03d", i), []byte("x"))
	}
	policy := RetryPolicy{BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond, TTFB: time.Second,
		List: 400 * time.Millisecond, Budget: 500 * time.Millisecond}
	tests := []struct {
		name  string
		delay time.Duration // of every request to the origin
		ok    bool
	}{
		{"pages keep coming", 120 * time.Millisecond, true},
		{"pages stop coming", 2 * time.Second, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proxy, err := faultproxy.New(srv.Endpoint, faultproxy.Config{DelayRate: 1, Delay: tc.delay})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = proxy.Close() })
			raw, err := Parse("s3://data?endpoint="+proxy.URL(), Options{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
				S3Region: "us-east-1"})
			if err != nil {
				t.Fatal(err)
			}
			raw.(*s3Source).maxKeys = 10 // 5 pages, 5 requests held
			var got []Entry
			err = ListPages(context.Background(), WithRetry(raw, policy), "many", func(p []Entry) error {
				got = append(got, p...)
				return nil
			})
			if !tc.ok {
				if err == nil || !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("a stalled listing: err %v; want one caused by its deadline", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("a listing whose pages keep coming failed: %v", err)
			}
			if len(got) != n || got[0].Name != "f000" || got[n-1].Name != fmt.Sprintf("f%03d", n-1) {
				t.Fatalf("listed %d entries (%v ...); want %d", len(got), got[:min(3, len(got))], n)
			}
		})
	}
}
