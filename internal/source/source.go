// Package source reads datasets from their origin: S3-compatible object
// storage (s3://bucket/prefix), a local or NFS directory (file:///abs/path)
// and single HTTP(S) objects (http(s)://host/path).
//
// Paths handed to a Source are slash-separated and relative to the dataset
// root ("" is the root, "a/b.bin" a file below directory "a"); they never
// start with "/" and never contain "." or ".." elements.
//
// Every Source is safe for concurrent use. Errors are classified with the
// sentinel errors below (errors.Is); everything else is treated as transient
// by the retry wrapper (see retry.go).
package source

import (
	"context"
	"errors"
	"io/fs"
	"time"
)

// Entry describes one object or directory of a dataset.
type Entry struct {
	// Name is the last path element ("" for the dataset root).
	Name string
	// IsDir is true for directories (S3 common prefixes).
	IsDir bool
	// Size in bytes (0 for directories).
	Size int64
	// ModTime is the origin's modification time (zero if unknown).
	ModTime time.Time
	// Version identifies the object's content: the S3 ETag (or version id),
	// the HTTP ETag or Last-Modified+size, or size+mtime for files. A change
	// of content always changes Version. Empty for directories.
	Version string
}

// Source is a dataset origin.
type Source interface {
	// ID is a stable identity of the dataset (scheme, endpoint, bucket,
	// prefix; never credentials). It is part of every cache key.
	ID() string
	// List returns the entries of directory dir, sorted by name.
	// ErrNotFound if dir does not exist.
	List(ctx context.Context, dir string) ([]Entry, error)
	// Stat returns the entry at path. ErrNotFound if there is none.
	Stat(ctx context.Context, path string) (Entry, error)
	// ReadAt fills p with the bytes of object path at offset off. It reads
	// exactly len(p) bytes or returns an error (never a silent short read;
	// a read past the end is ErrOutOfRange). version is the Entry.Version
	// the caller expects; when the origin's object no longer has that
	// version, ReadAt returns ErrVersionChanged instead of other bytes.
	ReadAt(ctx context.Context, path, version string, p []byte, off int64) error
}

// ChecksumReader is a Source whose reads also return the CRC-32C
// (Castagnoli) of the bytes, checked on the way in (the cache workers send
// it with every block), so the block cache need not compute it again.
type ChecksumReader interface {
	ReadAtChecksum(ctx context.Context, path, version string, p []byte, off int64) (uint32, error)
}

// Sentinel errors. They are permanent: the retry wrapper never retries them.
var (
	ErrNotFound       = fs.ErrNotExist
	ErrPermission     = fs.ErrPermission
	ErrVersionChanged = errors.New("object changed at the origin")
	ErrOutOfRange     = errors.New("read past the end of the object")
	ErrInvalid        = errors.New("invalid source")
)

// ErrThrottled marks an origin's request to slow down (S3 SlowDown, HTTP
// 429 or 503). It is transient: the retry wrapper retries it and lowers
// the requests in flight toward that origin.
var ErrThrottled = errors.New("origin throttled the request")
