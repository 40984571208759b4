package cacheserver

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
)

// TestBatchReads: readahead reads of whole small objects bound for one
// worker go as batch requests and return the objects' bytes; a read the
// batch cannot answer (a changed version) gets its definite answer the
// usual way; a worker that does not know batch reads serves them one by
// one.
func TestBatchReads(t *testing.T) {
	tests := []struct {
		name       string
		refuse     bool
		badVersion bool
		wantBatch  bool
	}{
		{name: "batched", wantBatch: true},
		{name: "one object changed", badVersion: true, wantBatch: true},
		{name: "worker without batch reads", refuse: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := startOrigin(t, 20, 10_000)
			osrc := o.source(t)
			w := startWorker(t, osrc)
			if tc.refuse {
				w.ops.setRefused("batch")
			}
			_, src, _ := newClient(t, []string{w.url}, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			entries, err := osrc.List(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			rctx := source.WithReadahead(ctx)
			errs := make([]error, len(entries))
			bufs := make([][]byte, len(entries))
			var wg sync.WaitGroup
			for i, e := range entries {
				version := e.Version
				if tc.badVersion && i == 3 {
					version = "not-" + version
				}
				bufs[i] = make([]byte, e.Size)
				wg.Go(func() { _, errs[i] = src.ReadAtChecksum(rctx, e.Name, version, bufs[i], 0) })
			}
			wg.Wait()
			for i, e := range entries {
				if tc.badVersion && i == 3 {
					if !errors.Is(errs[i], source.ErrVersionChanged) {
						t.Errorf("%s with a wrong version: %v, want ErrVersionChanged", e.Name, errs[i])
					}
					continue
				}
				if errs[i] != nil {
					t.Fatalf("%s: %v", e.Name, errs[i])
				}
				if !bytes.Equal(bufs[i], o.files[e.Name]) {
					t.Fatalf("%s: wrong bytes", e.Name)
				}
			}
			batches, reads := w.ops.count("batch"), w.ops.count("read")
			t.Logf("%d objects: %d batch requests, %d single reads", len(entries), batches, reads)
			switch {
			case tc.wantBatch && (batches == 0 || batches > len(entries)/2):
				t.Errorf("%d batch requests for %d objects, want a few", batches, len(entries))
			case tc.wantBatch && tc.badVersion && reads != 1:
				t.Errorf("%d single reads, want 1 (the changed object)", reads)
			case tc.wantBatch && !tc.badVersion && reads != 0:
				t.Errorf("%d single reads, want none", reads)
			case tc.refuse && reads != len(entries):
				t.Errorf("%d single reads from a worker without batch reads, want %d", reads, len(entries))
			}
		})
	}
}

// TestBatchRequestsRejected: malformed batch requests are refused whole
// with 400 and a reason.
func TestBatchRequestsRejected(t *testing.T) {
	o := startOrigin(t, 1, 1000)
	w := startWorker(t, o.source(t))
	_, _, pool := newClient(t, []string{w.url}, nil)
	ctx := context.Background()
	tests := []struct {
		name  string
		query map[string][]string
	}{
		{"no objects", map[string][]string{}},
		{"a version missing", map[string][]string{"path": {"a", "b"}, "version": {"v"}, "len": {"1", "1"}}},
		{"a len too large", map[string][]string{"path": {"a"}, "version": {"v"}, "len": {"99999999"}}},
		{"a climbing path", map[string][]string{"path": {"../x"}, "version": {"v"}, "len": {"1"}}},
		{"too many", map[string][]string{"path": make([]string, MaxBatch+1), "version": make([]string, MaxBatch+1),
			"len": make([]string, MaxBatch+1)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ws := pool.order("x")
			_, err := pool.get(ctx, ws[0], "batch", tc.query, 5*time.Second, nil)
			if !errors.Is(err, source.ErrInvalid) {
				t.Fatalf("batch %v: %v, want a 400 (ErrInvalid)", tc.query, err)
			}
		})
	}
}
