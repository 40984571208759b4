package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Versions of HTTP objects. A strong ETag is the Version as sent (with its
// quotes), so it can go back verbatim in If-Match. Without one, the Version
// is "lm:<Last-Modified as Unix seconds>:<size>" (sent back as
// If-Unmodified-Since, with the size checked against Content-Range), and
// without Last-Modified "size:<size>" (only the size can be checked).
// Weak ETags (W/"...") are ignored: If-Match never matches them.
const (
	lastModVersion = "lm:"
	sizeVersion    = "size:"
)

// httpSource is one object at an http(s) URL: a dataset whose root holds a
// single file named after the URL's last path element.
//
// Stat sends HEAD; when the origin refuses HEAD with 403, 405 or 501 (e.g.
// presigned URLs, which are signed for GET only) it falls back to a GET of
// the first byte. ReadAt sends a ranged GET and checks the returned
// Content-Range. An origin that ignores Range and answers 200 with the whole
// body still works, slowly: the bytes before off are read and discarded (this
// is logged once per source).
type httpSource struct {
	url    string // request URL; may hold userinfo and query, never logged
	id     string
	name   string
	client *http.Client

	rangeIgnored sync.Once
}

var _ Source = (*httpSource)(nil)

func newHTTP(u *url.URL, client *http.Client) (*httpSource, error) {
	if client == nil {
		client = &http.Client{Transport: newTransport()}
	}
	req := *u
	req.Fragment, req.RawFragment = "", ""
	idu := req
	idu.User, idu.RawQuery, idu.ForceQuery = nil, "", false
	s := &httpSource{url: req.String(), id: idu.String(), name: httpName(u), client: client}
	klog.InfoS("Opened HTTP source", "id", s.id, "name", s.name)
	return s, nil
}

// httpName is the file name of the object at u: its last path element,
// unescaped, or "index".
func httpName(u *url.URL) string {
	ep := u.EscapedPath()
	if i := strings.LastIndexByte(ep, '/'); i >= 0 {
		ep = ep[i+1:]
	}
	name, err := url.PathUnescape(ep)
	if err != nil || !ValidName(name) {
		return "index"
	}
	return name
}

func (s *httpSource) ID() string { return s.id }

func (s *httpSource) List(ctx context.Context, dir string) ([]Entry, error) {
	if err := checkPath(dir); err != nil {
		return nil, err
	}
	if dir != "" {
		return nil, fmt.Errorf("http list %s: %q: %w", s.id, dir, ErrNotFound)
	}
	e, err := s.Stat(ctx, s.name)
	if err != nil {
		return nil, err
	}
	return []Entry{e}, nil
}

func (s *httpSource) Stat(ctx context.Context, p string) (Entry, error) {
	if err := checkPath(p); err != nil {
		return Entry{}, err
	}
	switch p {
	case "":
		return Entry{IsDir: true}, nil
	case s.name:
	default:
		return Entry{}, fmt.Errorf("http stat %s: %q: %w", s.id, p, ErrNotFound)
	}
	resp, err := s.do(ctx, http.MethodHead, nil)
	if err != nil {
		return Entry{}, err
	}
	drain(resp)
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength < 0 {
			return Entry{}, fmt.Errorf("%w: http stat %s: HEAD response has no Content-Length", ErrInvalid, s.id)
		}
		return s.entry(resp.Header, resp.ContentLength), nil
	case http.StatusForbidden, http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return s.statByGET(ctx)
	}
	return Entry{}, s.statusErr("stat", resp)
}

// statByGET learns the size from a GET of the first byte.
func (s *httpSource) statByGET(ctx context.Context) (Entry, error) {
	resp, err := s.do(ctx, http.MethodGet, http.Header{"Range": {"bytes=0-0"}})
	if err != nil {
		return Entry{}, err
	}
	defer drain(resp)
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if _, _, total, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && total >= 0 {
			return s.entry(resp.Header, total), nil
		}
		return Entry{}, fmt.Errorf("%w: http stat %s: no object size in Content-Range %q",
			ErrInvalid, s.id, resp.Header.Get("Content-Range"))
	case http.StatusOK:
		if resp.ContentLength < 0 {
			return Entry{}, fmt.Errorf("%w: http stat %s: response has no Content-Length", ErrInvalid, s.id)
		}
		return s.entry(resp.Header, resp.ContentLength), nil
	case http.StatusRequestedRangeNotSatisfiable:
		// An empty object: "bytes */0".
		if cr := resp.Header.Get("Content-Range"); strings.TrimSpace(cr) == "bytes */0" {
			return s.entry(resp.Header, 0), nil
		}
	}
	return Entry{}, s.statusErr("stat", resp)
}

func (s *httpSource) entry(h http.Header, size int64) Entry {
	e := Entry{Name: s.name, Size: size}
	lm, lmErr := http.ParseTime(h.Get("Last-Modified"))
	if lmErr == nil {
		e.ModTime = lm
	}
	switch etag := h.Get("ETag"); {
	case strings.HasPrefix(etag, `"`) && strings.HasSuffix(etag, `"`) && len(etag) >= 2:
		e.Version = etag
	case lmErr == nil:
		e.Version = fmt.Sprintf("%s%d:%d", lastModVersion, lm.Unix(), size)
	default:
		e.Version = fmt.Sprintf("%s%d", sizeVersion, size)
	}
	return e
}

// parseHTTPVersion returns what a Version lets ReadAt check.
func parseHTTPVersion(v string) (etag string, lastMod time.Time, size int64) {
	size = -1
	switch {
	case strings.HasPrefix(v, `"`):
		return v, time.Time{}, -1
	case strings.HasPrefix(v, lastModVersion):
		sec, sz, _ := strings.Cut(strings.TrimPrefix(v, lastModVersion), ":")
		if n, err := strconv.ParseInt(sec, 10, 64); err == nil {
			lastMod = time.Unix(n, 0)
		}
		if n, err := strconv.ParseInt(sz, 10, 64); err == nil {
			size = n
		}
	case strings.HasPrefix(v, sizeVersion):
		if n, err := strconv.ParseInt(strings.TrimPrefix(v, sizeVersion), 10, 64); err == nil {
			size = n
		}
	}
	return "", lastMod, size
}

func (s *httpSource) ReadAt(ctx context.Context, p, version string, buf []byte, off int64) error {
	if err := checkPath(p); err != nil {
		return err
	}
	if p == "" || off < 0 {
		return fmt.Errorf("%w: read %q at offset %d", ErrInvalid, p, off)
	}
	if p != s.name {
		return fmt.Errorf("http read %s: %q: %w", s.id, p, ErrNotFound)
	}
	if len(buf) == 0 {
		return nil
	}
	end := off + int64(len(buf)) - 1
	h := http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, end)}}
	etag, lastMod, size := parseHTTPVersion(version)
	if etag != "" {
		h.Set("If-Match", etag)
	}
	if !lastMod.IsZero() {
		h.Set("If-Unmodified-Since", lastMod.UTC().Format(http.TimeFormat))
	}
	resp, err := s.do(ctx, http.MethodGet, h)
	if err != nil {
		return err
	}
	defer drain(resp)

	where := fmt.Sprintf("http read %s [%d, %d]", s.id, off, end)
	if got := resp.Header.Get("ETag"); etag != "" && got != "" && got != etag &&
		(resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent) {
		return fmt.Errorf("%s: ETag is now %s, was %s: %w", where, got, etag, ErrVersionChanged)
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		first, last, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		switch {
		case !ok:
			return fmt.Errorf("%s: invalid Content-Range %q", where, resp.Header.Get("Content-Range"))
		case size >= 0 && total >= 0 && total != size:
			return fmt.Errorf("%s: size is now %d, was %d: %w", where, total, size, ErrVersionChanged)
		case total >= 0 && end >= total:
			return fmt.Errorf("%s: object has %d bytes: %w", where, total, ErrOutOfRange)
		case first != off || last != end:
			return fmt.Errorf("%s: server sent range %d-%d", where, first, last)
		}
	case http.StatusOK:
		s.rangeIgnored.Do(func() {
			klog.InfoS("HTTP origin ignores Range requests; every read downloads from the start",
				"source", s.id)
		})
		cl := resp.ContentLength
		switch {
		case size >= 0 && cl >= 0 && cl != size:
			return fmt.Errorf("%s: size is now %d, was %d: %w", where, cl, size, ErrVersionChanged)
		case cl >= 0 && end >= cl:
			return fmt.Errorf("%s: object has %d bytes: %w", where, cl, ErrOutOfRange)
		}
		if n, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%s: body ended after %d bytes: %w", where, n, io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("%s: skipping to the offset: %w", where, err)
		}
	default:
		return s.statusErr("read", resp)
	}
	if n, err := ReadFull(ctx, resp.Body, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%s: %w", where, partial(n, err))
	}
	return nil
}

// do sends one request. Transport errors are transient; their text never
// includes the URL's query or userinfo.
func (s *httpSource) do(ctx context.Context, method string, h http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: http %s %s: %v", ErrInvalid, method, s.id, err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	// Byte ranges of the stored object, not of a compressed encoding.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := s.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error's text holds the full URL
		}
		return nil, fmt.Errorf("http %s %s: %w", method, s.id, err)
	}
	return resp, nil
}

// statusErr classifies an unexpected HTTP status.
func (s *httpSource) statusErr(op string, resp *http.Response) error {
	where := fmt.Sprintf("http %s %s: %s", op, s.id, resp.Status)
	switch c := resp.StatusCode; {
	case c == http.StatusNotFound || c == http.StatusGone:
		return fmt.Errorf("%s: %w", where, ErrNotFound)
	case c == http.StatusUnauthorized || c == http.StatusForbidden:
		return fmt.Errorf("%s: %w", where, ErrPermission)
	case c == http.StatusPreconditionFailed:
		return fmt.Errorf("%s: %w", where, ErrVersionChanged)
	case c == http.StatusRequestedRangeNotSatisfiable:
		return fmt.Errorf("%s: %w", where, ErrOutOfRange)
	case c == http.StatusTooManyRequests || c == http.StatusServiceUnavailable:
		return fmt.Errorf("%s: %w", where, ErrThrottled)
	case c == http.StatusRequestTimeout || c >= 500:
		return errors.New(where) // transient
	case c >= 400:
		return fmt.Errorf("%s: %w", where, ErrInvalid)
	}
	return fmt.Errorf("%s: unexpected status", where) // e.g. an unfollowed redirect
}

// drain reads a little of what is left of the body, so the connection can
// be reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}
