// Package cacheserver is the cluster-wide cache tier: the cache worker's
// HTTP API (Server) and its client side (Pool, Getter, Source).
//
// A worker serves one dataset from its own block cache (the same
// blockcache code as every mount) and is the only reader of the origin for
// its clients. Clients pick a worker per block by rendezvous (HRW) hashing
// of the block key over the worker set, so the set shards the dataset and a
// new worker takes over only its share. API (all GET, bearer token):
//
//	/v1/datasets/{dataset}/list?path=DIR          JSON []source.Entry
//	/v1/datasets/{dataset}/stat?path=P            JSON source.Entry
//	/v1/datasets/{dataset}/read?path=P&version=V&off=O&len=N
//	    N bytes; headers Content-Length and X-Sluice-Crc32c (hex CRC-32C)
//	/healthz, /readyz                             no token
//
// Errors are plain-text reasons with 400 (bad request), 401 (token),
// 403 (permission), 404 (unknown dataset or path), 412 (object version
// changed), 416 (range), 502 (origin failed), 503 (draining or busy).
package cacheserver

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/sluice-dev/sluice/internal/source"
)

const (
	// ChecksumHeader carries the CRC-32C (Castagnoli) of a read's body, hex.
	ChecksumHeader = "X-Sluice-Crc32c"
	// ReadaheadHeader ("1") marks a read that no reader waits for yet; the
	// worker serves such reads after the others.
	ReadaheadHeader = "X-Sluice-Readahead"
	// MaxReadLen bounds one read request.
	MaxReadLen = 64 << 20
	// DefaultDataset is the dataset name of a worker started without one.
	DefaultDataset = "default"
)

// entryJSON is the wire form of a source.Entry.
type entryJSON struct {
	Name    string `json:"name"`
	IsDir   bool   `json:"isDir,omitempty"`
	Size    int64  `json:"size,omitempty"`
	ModTime int64  `json:"mtimeNs,omitempty"`
	Version string `json:"version,omitempty"`
}

// statusError maps a data-path error to an HTTP status.
func statusError(err error) int {
	switch {
	case errors.Is(err, source.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, source.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, source.ErrPermission):
		return http.StatusForbidden
	case errors.Is(err, source.ErrVersionChanged):
		return http.StatusPreconditionFailed
	case errors.Is(err, source.ErrOutOfRange):
		return http.StatusRequestedRangeNotSatisfiable
	default:
		return http.StatusBadGateway
	}
}

// errorFromStatus is statusError's inverse on the client side.
func errorFromStatus(code int, reason string) error {
	var base error
	switch code {
	case http.StatusBadRequest:
		base = source.ErrInvalid
	case http.StatusNotFound:
		base = source.ErrNotFound
	case http.StatusForbidden, http.StatusUnauthorized:
		base = source.ErrPermission
	case http.StatusPreconditionFailed:
		base = source.ErrVersionChanged
	case http.StatusRequestedRangeNotSatisfiable:
		base = source.ErrOutOfRange
	default:
		return &workerError{code: code, reason: reason}
	}
	return &wrapped{base: base, msg: reason}
}

type workerError struct {
	code   int
	reason string
}

func (e *workerError) Error() string {
	return "cache worker: " + http.StatusText(e.code) + ": " + e.reason
}

type wrapped struct {
	base error
	msg  string
}

func (e *wrapped) Error() string { return "cache worker: " + e.msg }
func (e *wrapped) Unwrap() error { return e.base }

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
