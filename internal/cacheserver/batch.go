package cacheserver

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"strconv"

	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// A batch read asks one worker for the first bytes of several objects in
// one request: a walk through a directory of small files prefetches the
// next files, and each would otherwise be a request of its own.
//
//	/v1/datasets/{dataset}/batch?path=P1&version=V1&len=N1&path=P2&...
//
// The answer (200, application/x-sluice-batch) is one frame per object, in
// the order asked: a 16-byte header — status (uint16, 200 or the status a
// read of that object alone would have had), two zero bytes, the CRC-32C
// of the payload (uint32), the payload's length (uint64), all big-endian —
// then the payload: the N bytes at offset 0, or the reason of the error.
const (
	// MaxBatch bounds the objects of one batch read.
	MaxBatch = 64
	// MaxBatchObject bounds the bytes of one object of a batch read.
	MaxBatchObject = 1 << 20
	// batchContentType is the content type of a batch answer.
	batchContentType = "application/x-sluice-batch"
	frameHeader      = 16
	// batchParallel bounds the objects of one batch read fetched at once.
	batchParallel = 8
)

type batchItem struct {
	path, version string
	n             int64
}

type batchResult struct {
	body    []byte
	crc     uint32
	release func()
	status  int
	reason  string
}

// parseBatch checks a batch request's objects.
func parseBatch(r *http.Request) ([]batchItem, error) {
	q := r.URL.Query()
	paths, versions, lens := q["path"], q["version"], q["len"]
	switch {
	case len(paths) == 0 || len(paths) > MaxBatch:
		return nil, fmt.Errorf("%w: a batch reads 1 to %d objects, not %d", source.ErrInvalid, MaxBatch, len(paths))
	case len(versions) != len(paths) || len(lens) != len(paths):
		return nil, fmt.Errorf("%w: want one version and one len for each path", source.ErrInvalid)
	}
	items := make([]batchItem, len(paths))
	for i, p := range paths {
		if err := source.CheckPath(p); err != nil {
			return nil, err
		}
		n, err := strconv.ParseInt(lens[i], 10, 64)
		switch {
		case err != nil || n <= 0 || n > MaxBatchObject:
			return nil, fmt.Errorf("%w: len %q of %s: want 0 < len <= %d", source.ErrInvalid, lens[i], p, MaxBatchObject)
		case versions[i] == "":
			return nil, fmt.Errorf("%w: version of %s is required", source.ErrInvalid, p)
		}
		items[i] = batchItem{path: p, version: versions[i], n: n}
	}
	return items, nil
}

// batch reads every object of the request, batchParallel at a time. An
// object that fails has its own status in its frame; the batch fails as a
// whole only when the request is malformed or its context ends.
func (s *Server) batch(ctx context.Context, r *http.Request) (func(http.ResponseWriter), error) {
	items, err := parseBatch(r)
	if err != nil {
		return nil, err
	}
	if r.Header.Get(ReadaheadHeader) == "1" {
		ctx = source.WithReadahead(ctx)
	}
	results := make([]batchResult, len(items))
	var g errgroup.Group
	g.SetLimit(batchParallel)
	for i, it := range items {
		g.Go(func() error {
			results[i] = s.batchOne(ctx, it)
			return nil
		})
	}
	g.Wait()
	if err := ctx.Err(); err != nil {
		for _, res := range results {
			res.release()
		}
		return nil, err
	}
	return func(w http.ResponseWriter) {
		var total int64
		for _, res := range results {
			total += frameHeader + int64(len(res.body))
		}
		w.Header().Set("Content-Type", batchContentType)
		w.Header().Set("Content-Length", strconv.FormatInt(total, 10))
		var hdr [frameHeader]byte
		failed := false
		for _, res := range results {
			if !failed {
				binary.BigEndian.PutUint16(hdr[0:], uint16(res.status))
				binary.BigEndian.PutUint32(hdr[4:], res.crc)
				binary.BigEndian.PutUint64(hdr[8:], uint64(len(res.body)))
				if _, err := w.Write(hdr[:]); err != nil {
					failed = true
				} else if _, err := w.Write(res.body); err != nil {
					failed = true
				}
				if failed {
					klog.V(4).InfoS("Client went away mid-batch", "err", err)
				}
			}
			res.release()
		}
	}, nil
}

// batchOne reads one object of a batch as a read request would.
func (s *Server) batchOne(ctx context.Context, it batchItem) batchResult {
	fail := func(err error) batchResult {
		reason := []byte(clientReason("read", it.path, err))
		return batchResult{body: reason, crc: blockcache.Checksum(reason), release: func() {}, status: statusError(err)}
	}
	e, err := s.entry(ctx, it.path, it.version)
	if err != nil {
		return fail(err)
	}
	if it.n > e.Size {
		return fail(fmt.Errorf("%w: %d bytes at 0 are past the end of %s (%d bytes)", source.ErrOutOfRange, it.n, it.path, e.Size))
	}
	obj := blockcache.ObjectRef{Source: s.srcID, Path: it.path, Version: it.version, Size: e.Size}
	body, crc, release, err := s.body(ctx, obj, 0, it.n)
	if err != nil {
		return fail(err)
	}
	return batchResult{body: body, crc: crc, release: release, status: http.StatusOK}
}
