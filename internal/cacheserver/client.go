package cacheserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
)

// Source reads a dataset through the cache workers: listings, stats and
// bytes. It implements source.Source, so a mount's block cache reads from
// it as from any origin. Each request goes to the workers in HRW order of
// its key; a worker that fails is put in back-off and the next one is
// tried, then Fallback (the origin, when the mount holds credentials).
// Errors that are answers (not found, changed, out of range, forbidden)
// end the search.
type Source struct {
	pool     *Pool
	id       string
	Fallback source.Source
}

var _ source.Source = (*Source)(nil)

// WorkersID is the source ID of a Dataset read through its workers alone
// (the file system's name in /proc/mounts).
func WorkersID(dataset string) string { return "workers://" + dataset }

// NewSource returns a Source over pool. id names the dataset in local cache
// keys; use the origin's ID when known so the local disk cache is shared
// with origin mode.
func NewSource(pool *Pool, id string, fallback source.Source) *Source {
	return &Source{pool: pool, id: id, Fallback: fallback}
}

// ID implements source.Source.
func (s *Source) ID() string { return s.id }

// answered reports whether err is a worker's definite answer rather than
// a failure of that worker.
func answered(err error) bool {
	return errors.Is(err, source.ErrNotFound) || errors.Is(err, source.ErrVersionChanged) ||
		errors.Is(err, source.ErrOutOfRange) || errors.Is(err, source.ErrPermission) ||
		errors.Is(err, source.ErrInvalid)
}

// each runs try against workers in HRW order of key until one succeeds or
// answers; then the fallback.
func (s *Source) each(ctx context.Context, key string, try func(w *worker) error, fallback func() error) error {
	var last error
	for _, w := range s.pool.order(key) {
		err := try(w)
		if err == nil {
			s.pool.markOK(w)
			return nil
		}
		if answered(err) || ctx.Err() != nil {
			return err
		}
		s.pool.markFailed(w, err)
		last = err
	}
	if s.Fallback != nil {
		return fallback()
	}
	if last == nil {
		return errors.New("no cache workers known yet")
	}
	return fmt.Errorf("no cache worker could answer: %w", last)
}

// List implements source.Source.
func (s *Source) List(ctx context.Context, dir string) ([]source.Entry, error) {
	var out []source.Entry
	err := s.each(ctx, "list\x00"+dir, func(w *worker) error {
		var js []entryJSON
		if err := s.getJSON(ctx, w, "list", url.Values{"path": {dir}}, &js); err != nil {
			return err
		}
		out = make([]source.Entry, len(js))
		for i, j := range js {
			out[i] = fromJSON(j)
		}
		return nil
	}, func() (err error) { out, err = s.Fallback.List(ctx, dir); return err })
	return out, err
}

// Stat implements source.Source.
func (s *Source) Stat(ctx context.Context, p string) (source.Entry, error) {
	var out source.Entry
	err := s.each(ctx, "stat\x00"+p, func(w *worker) error {
		var j entryJSON
		if err := s.getJSON(ctx, w, "stat", url.Values{"path": {p}}, &j); err != nil {
			return err
		}
		out = fromJSON(j)
		return nil
	}, func() (err error) { out, err = s.Fallback.Stat(ctx, p); return err })
	return out, err
}

// ReadAt implements source.Source. The HRW key is (path, version, offset):
// every client reading the same block asks the same worker, so the origin
// is read once per block across the cluster.
func (s *Source) ReadAt(ctx context.Context, p, version string, buf []byte, off int64) error {
	key := p + "\x00" + version + "\x00" + strconv.FormatInt(off, 10)
	return s.each(ctx, key, func(w *worker) error {
		return s.read(ctx, w, p, version, buf, off)
	}, func() error { return s.Fallback.ReadAt(ctx, p, version, buf, off) })
}

func (s *Source) read(ctx context.Context, w *worker, p, version string, buf []byte, off int64) error {
	q := url.Values{"path": {p}, "version": {version}, "off": {strconv.FormatInt(off, 10)}, "len": {strconv.Itoa(len(buf))}}
	resp, cancel, err := s.pool.get(ctx, w, "read", q)
	if err != nil {
		return err
	}
	defer cancel()
	defer resp.Body.Close()
	if resp.ContentLength != int64(len(buf)) {
		return fmt.Errorf("worker %s sent %d bytes, want %d", w.url, resp.ContentLength, len(buf))
	}
	want, err := strconv.ParseUint(resp.Header.Get(ChecksumHeader), 16, 32)
	if err != nil {
		return fmt.Errorf("worker %s sent no valid %s header", w.url, ChecksumHeader)
	}
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return fmt.Errorf("reading from worker %s: %w", w.url, err)
	}
	if got := crc32.Checksum(buf, castagnoli); got != uint32(want) {
		return fmt.Errorf("worker %s: checksum mismatch", w.url)
	}
	return nil
}

func (s *Source) getJSON(ctx context.Context, w *worker, op string, q url.Values, v any) error {
	resp, cancel, err := s.pool.get(ctx, w, op, q)
	if err != nil {
		return err
	}
	defer cancel()
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(v); err != nil {
		return fmt.Errorf("worker %s: bad %s answer: %w", w.url, op, err)
	}
	return nil
}

func fromJSON(j entryJSON) source.Entry {
	e := source.Entry{Name: j.Name, IsDir: j.IsDir, Size: j.Size, Version: j.Version}
	if j.ModTime != 0 {
		e.ModTime = time.Unix(0, j.ModTime)
	}
	return e
}

// readReason reads a short error body.
func readReason(resp *http.Response) string {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return strings.TrimSpace(string(b))
}
