// Package cacheserver is the cluster-wide cache tier: the cache worker's
// HTTP API (Server) and its client side (Pool, Source).
//
// A worker serves one dataset from its own block cache (the same
// blockcache code as every mount) and is the only reader of the origin for
// its clients. Clients pick a worker per block by rendezvous (HRW) hashing
// of the block key over the worker set, so the set shards the dataset and a
// new worker takes over only its share. API (bearer token):
//
//	/v1/datasets/{dataset}/list?path=DIR          JSON []source.Entry
//	/v1/datasets/{dataset}/stat?path=P            JSON source.Entry
//	/v1/datasets/{dataset}/read?path=P&version=V&off=O&len=N
//	    N bytes; headers Content-Length and X-Sluice-Crc32c (hex CRC-32C).
//	    A range within one block is answered as soon as its bytes have
//	    arrived from the origin, before the rest of the block.
//	/v1/datasets/{dataset}/batch?path=P1&version=V1&len=N1&path=P2&...
//	    the first N bytes of each of up to 64 objects, framed (batch.go)
//	POST /v1/datasets/{dataset}/handover          a leaving peer's blocks (handover.go)
//	/healthz, /readyz                             no token
//
// While a data request is being worked on, the worker sends an interim
// "102 Processing" response after 20 ms and then every 500 ms. Errors are
// plain-text reasons with 400 (bad request), 401 (token), 403 (permission),
// 404 (unknown dataset or path), 409 (a peer's read of a block the worker
// does not hold), 412 (object version changed), 416
// (range), 429 (busy), 502 (origin failed), 503 (draining) and 504 (the origin
// did not answer within the client's deadline).
//
// # Deadlines and retries
//
// A read never hangs: each hop has one retry policy and one budget, and
// each deadline is shorter than the one of the hop above it.
//
//   - Reader → block cache: a block is fetched within the read budget
//     (--read-budget, 60 s for mounts, sidecars and CSI sessions); past it
//     the read fails with the last cause logged.
//   - Client → workers (Source, the hop's one retry policy; never wrapped
//     in source.WithRetry): rounds until the budget is spent. A round asks
//     the workers that are up in HRW order of the block, then the origin
//     when the mount holds credentials (Fallback, with the origin hop's own
//     policy); rounds are spaced by a jittered backoff of up to 1 s. One
//     attempt at one worker has the deadline --worker-timeout (30 s) plus
//     its bytes at 1 MiB/s, and the worker is told it (X-Sluice-Timeout-Ms).
//     A worker that sends nothing — no 102, header or body byte, on this
//     request or any other of the process's requests to it — for 3 s
//     (Silence), misses an attempt's deadline, fails the connection or
//     answers garbage is marked failed for the whole process before the
//     next attempt, which goes to the next worker in HRW order. A worker
//     that answers 502 or 504 is alive: its origin failed, and the round
//     goes on to the fallback instead of making another worker read the
//     origin too.
//   - Hedging (hedge.go): a block request whose worker shows no sign of
//     life within the set's recent p95 time to first sign (300 ms–2 s) is
//     also sent to the next worker; at most HedgeRate (5 %) extra requests.
//   - Health: Pool.Run probes failed workers' /readyz (1 s timeout) in
//     backoff from 250 ms to 5 s and brings back those that answer.
//   - Worker → origin (source.WithRetry): a worker's request ends at the
//     client's deadline less a margin (504), while the block's fetch goes
//     on for up to the worker's read budget (--read-budget, 2 min for
//     workers), so the client's next attempt joins it rather than making
//     the origin send the block again. Each origin attempt has 10 s to its
//     first byte plus its bytes at 1 MiB/s; an attempt cut short mid-body
//     is retried for the bytes that did not arrive (source.PartialError).
//     Throttling answers (503 SlowDown, 429) halve the requests in flight
//     toward the origin (AIMD).
//   - A worker with too many requests in flight answers 429: the client
//     keeps it in the set and asks it again in the next round, since the
//     next worker would fetch the block from the origin.
package cacheserver

import (
	"context"
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
	// TimeoutHeader carries the client's deadline for this request in
	// milliseconds; the worker answers (504 if its origin is slower)
	// before it, so a slow origin shows as an answer, not as a dead worker.
	TimeoutHeader = "X-Sluice-Timeout-Ms"
	// PeerHeader ("1") marks a read one worker sends another: it is
	// answered from what the worker holds or is fetching, else 409, never
	// from the origin.
	PeerHeader = "X-Sluice-Peer"
	// PeerRankHeader carries, with PeerHeader, the asking worker's cache
	// rank (blockcache.PeerRank, decimal): the worker waits for a fetch of
	// its own that is asking peers only for an asker that ranks below it.
	PeerRankHeader = "X-Sluice-Peer-Rank"
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

// errNotHeld answers a peer's read of a block the worker does not hold.
var errNotHeld = errors.New("not held by this worker")

// statusError maps a data-path error to an HTTP status.
func statusError(err error) int {
	switch {
	case errors.Is(err, errNotHeld):
		return http.StatusConflict
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
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
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
