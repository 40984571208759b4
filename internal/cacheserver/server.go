package cacheserver

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// Authenticator checks a request's credentials: StaticToken (--token-file)
// or PodTokens (--token-review, projected service-account tokens).
type Authenticator interface {
	Authenticate(r *http.Request) error
}

// StaticToken accepts requests bearing one token.
type StaticToken struct{ token []byte }

// NewTokenFile reads the token from path (surrounding space trimmed).
func NewTokenFile(path string) (*StaticToken, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("token file %s is empty", path)
	}
	return &StaticToken{token: []byte(tok)}, nil
}

// Authenticate implements Authenticator.
func (s *StaticToken) Authenticate(r *http.Request) error {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return errors.New("missing bearer token")
	}
	if subtle.ConstantTimeCompare([]byte(got), s.token) != 1 {
		return errors.New("wrong token")
	}
	return nil
}

// ServerConfig configures a worker.
type ServerConfig struct {
	Dataset     string
	Listings    *listcache.Cache
	Cache       *blockcache.Cache
	Auth        Authenticator
	MaxInFlight int // concurrent data requests; more get 429 (default 1024)
	// Peers are the other workers of the Dataset, whose Cache reads them
	// first (PeerGetter); nil: the worker takes no handover.
	Peers *Pool
}

// Server is the cache worker's HTTP API.
type Server struct {
	cfg      ServerConfig
	srcID    string
	slots    chan struct{}
	draining atomic.Bool
	mux      *http.ServeMux
	served   *servedLog // the blocks to hand over on scale-down
}

// NewServer returns a worker API over cfg.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Listings == nil || cfg.Cache == nil || cfg.Auth == nil {
		return nil, errors.New("cacheserver: Listings, Cache and Auth are required")
	}
	if cfg.Dataset == "" {
		cfg.Dataset = DefaultDataset
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	s := &Server{cfg: cfg, srcID: cfg.Listings.Source().ID(), slots: make(chan struct{}, cfg.MaxInFlight), mux: http.NewServeMux(),
		served: newServedLog()}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /v1/datasets/{dataset}/{op}", s.data)
	s.mux.HandleFunc("POST /v1/datasets/{dataset}/handover", s.handover)
	return s, nil
}

// Handler is the HTTP handler of the API.
func (s *Server) Handler() http.Handler { return s.mux }

// Drain makes the worker refuse new data requests (503) and report not
// ready; requests in flight finish.
func (s *Server) Drain() { s.draining.Store(true) }

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.draining.Load() {
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}

// authorized authenticates r, answering 401 or 403 when it fails.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	err := s.cfg.Auth.Authenticate(r)
	switch {
	case err == nil:
		return true
	case errors.Is(err, source.ErrPermission):
		http.Error(w, "forbidden: "+err.Error(), http.StatusForbidden)
	default:
		http.Error(w, "unauthorized: "+err.Error(), http.StatusUnauthorized)
	}
	return false
}

func (s *Server) data(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	// A draining worker still answers its peers: they pull its blocks in
	// the handover (handover.go).
	if s.draining.Load() && r.Header.Get(PeerHeader) != "1" {
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		http.Error(w, "busy: too many requests in flight", http.StatusTooManyRequests)
		return
	}
	if ds := r.PathValue("dataset"); ds != s.cfg.Dataset {
		http.Error(w, fmt.Sprintf("unknown dataset %q", ds), http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	p := q.Get("path")
	if err := source.CheckPath(p); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	op := r.PathValue("op")
	var work func(ctx context.Context) (func(http.ResponseWriter), error)
	switch op {
	case "list":
		work = func(ctx context.Context) (func(http.ResponseWriter), error) { return s.list(ctx, p) }
	case "stat":
		work = func(ctx context.Context) (func(http.ResponseWriter), error) { return s.stat(ctx, p) }
	case "read":
		work = func(ctx context.Context) (func(http.ResponseWriter), error) { return s.read(ctx, r, p) }
	case "batch":
		work = func(ctx context.Context) (func(http.ResponseWriter), error) { return s.batch(ctx, r) }
	default:
		http.Error(w, fmt.Sprintf("unknown operation %q", op), http.StatusNotFound)
		return
	}
	ctx, cancel := clientDeadline(r)
	defer cancel()
	write, err := working(ctx, w, work)
	if err != nil {
		code := statusError(err)
		if (code == http.StatusBadGateway || code == http.StatusGatewayTimeout) && r.Context().Err() == nil {
			klog.ErrorS(err, "Worker request failed", "op", op, "path", p)
		}
		if code == http.StatusGatewayTimeout {
			err = fmt.Errorf("the origin did not answer within the client's deadline: %w", err)
		}
		http.Error(w, clientReason(op, p, err), code)
		return
	}
	write(w)
}

// clientReason is the reason an error answer gives. A missing or
// forbidden path is named by its dataset path alone: the origin's own
// message may show where the worker keeps the dataset (a file origin's
// local path).
func clientReason(op, p string, err error) string {
	for _, sentinel := range []error{source.ErrNotFound, source.ErrPermission} {
		if errors.Is(err, sentinel) {
			return fmt.Sprintf("%s %q: %v", op, "/"+p, sentinel)
		}
	}
	return err.Error()
}

// Interim responses while a request is worked on.
const (
	firstInterim = 20 * time.Millisecond
	interimEvery = 500 * time.Millisecond
)

// clientDeadline is the request's context with the deadline the client
// sent (TimeoutHeader) less a margin, so the answer reaches it in time. A
// deadline too far off for a time.Duration counts as none (multiplied, it
// would wrap around to one that has already passed).
func clientDeadline(r *http.Request) (context.Context, context.CancelFunc) {
	ms, err := strconv.ParseInt(r.Header.Get(TimeoutHeader), 10, 64)
	if err != nil || ms <= 0 || ms > math.MaxInt64/int64(time.Millisecond) {
		return context.WithCancel(r.Context())
	}
	d := time.Duration(ms) * time.Millisecond
	return context.WithTimeout(r.Context(), d-min(d/10, time.Second))
}

// working runs work, sending an interim 102 after firstInterim and then
// every interimEvery until it is done, so the client can tell a busy
// worker from a silent one.
func working(ctx context.Context, w http.ResponseWriter, work func(context.Context) (func(http.ResponseWriter), error)) (func(http.ResponseWriter), error) {
	type result struct {
		write func(http.ResponseWriter)
		err   error
	}
	done := make(chan result, 1)
	go func() {
		write, err := work(ctx)
		done <- result{write, err}
	}()
	t := time.NewTimer(firstInterim)
	defer t.Stop()
	for {
		select {
		case r := <-done:
			return r.write, r.err
		case <-t.C:
			w.WriteHeader(http.StatusProcessing)
			t.Reset(interimEvery)
		}
	}
}

func toJSON(e source.Entry) entryJSON {
	j := entryJSON{Name: e.Name, IsDir: e.IsDir, Size: e.Size, Version: e.Version}
	if !e.ModTime.IsZero() {
		j.ModTime = e.ModTime.UnixNano()
	}
	return j
}

func (s *Server) list(ctx context.Context, p string) (func(http.ResponseWriter), error) {
	entries, err := s.cfg.Listings.List(ctx, p)
	if err != nil {
		return nil, err
	}
	out := make([]entryJSON, len(entries))
	for i, e := range entries {
		out[i] = toJSON(e)
	}
	return func(w http.ResponseWriter) { writeJSON(w, out) }, nil
}

func (s *Server) stat(ctx context.Context, p string) (func(http.ResponseWriter), error) {
	e, err := s.cfg.Listings.Stat(ctx, p)
	if err != nil {
		return nil, err
	}
	return func(w http.ResponseWriter) { writeJSON(w, toJSON(e)) }, nil
}

func (s *Server) read(ctx context.Context, r *http.Request, p string) (func(http.ResponseWriter), error) {
	q := r.URL.Query()
	off, err1 := strconv.ParseInt(q.Get("off"), 10, 64)
	n, err2 := strconv.ParseInt(q.Get("len"), 10, 64)
	version := q.Get("version")
	switch {
	case err1 != nil || err2 != nil:
		return nil, fmt.Errorf("%w: off and len must be integers", source.ErrInvalid)
	case off < 0 || n <= 0 || n > MaxReadLen:
		return nil, fmt.Errorf("%w: want off >= 0 and 0 < len <= %d", source.ErrInvalid, MaxReadLen)
	case version == "":
		return nil, fmt.Errorf("%w: version is required", source.ErrInvalid)
	}
	e, err := s.entry(ctx, p, version)
	if err != nil {
		return nil, err
	}
	if off > e.Size-n {
		return nil, fmt.Errorf("%w: %d bytes at %d are past the end of %s (%d bytes)", source.ErrOutOfRange, n, off, p, e.Size)
	}
	obj := blockcache.ObjectRef{Source: s.srcID, Path: p, Version: version, Size: e.Size}
	if r.Header.Get(ReadaheadHeader) == "1" {
		ctx = source.WithReadahead(ctx)
	}
	answer := s.body
	if r.Header.Get(PeerHeader) == "1" {
		answer = s.held
		if rank, err := strconv.ParseUint(r.Header.Get(PeerRankHeader), 10, 64); err == nil {
			ctx = blockcache.WithPeerRank(ctx, rank)
		}
	}
	body, crc, release, err := answer(ctx, obj, off, n)
	if err != nil {
		return nil, err
	}
	return func(w http.ResponseWriter) {
		defer release()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set(ChecksumHeader, strconv.FormatUint(uint64(crc), 16))
		if _, err := w.Write(body); err != nil {
			klog.V(4).InfoS("Client went away mid-response", "path", p, "err", err)
		}
	}, nil
}

// body returns the bytes [off, off+n) of obj and their CRC-32C. A request
// for exactly one cache block (clients use the workers' block size) is
// answered from the cached block itself, with its stored checksum: no copy,
// no second checksum pass; release gives the block back once it is sent.
func (s *Server) body(ctx context.Context, obj blockcache.ObjectRef, off, n int64) ([]byte, uint32, func(), error) {
	bs := s.cfg.Cache.BlockSize()
	if b := (blockcache.BlockRef{Object: obj, Index: off / bs, BlockSize: bs}); off%bs == 0 && n == b.Len() {
		s.served.note(b)
		return s.cfg.Cache.Block(ctx, b)
	}
	buf := make([]byte, n)
	if _, err := s.cfg.Cache.ReadAt(ctx, obj, buf, off); err != nil {
		return nil, 0, nil, err
	}
	return buf, blockcache.Checksum(buf), func() {}, nil
}

// held is body for a peer (PeerHeader): one whole block, answered only
// when this worker holds it or is fetching it (errNotHeld otherwise), so
// a worker that joins the set never makes this one read the origin.
func (s *Server) held(ctx context.Context, obj blockcache.ObjectRef, off, n int64) ([]byte, uint32, func(), error) {
	bs := s.cfg.Cache.BlockSize()
	b := blockcache.BlockRef{Object: obj, Index: off / bs, BlockSize: bs}
	if off%bs != 0 || n != b.Len() {
		return nil, 0, nil, fmt.Errorf("%w: a peer asks for whole blocks of %d bytes", source.ErrInvalid, bs)
	}
	data, crc, release, ok, err := s.cfg.Cache.Held(ctx, b)
	switch {
	case err != nil:
		return nil, 0, nil, err
	case !ok:
		return nil, 0, nil, errNotHeld
	}
	return data, crc, release, nil
}

// entry returns the file entry at p with the requested version, looking
// at the origin again once when the cached listing disagrees.
func (s *Server) entry(ctx context.Context, p, version string) (source.Entry, error) {
	for attempt := 0; ; attempt++ {
		e, err := s.cfg.Listings.Stat(ctx, p)
		if err != nil {
			return e, err
		}
		if e.IsDir {
			return e, fmt.Errorf("%w: %s is a directory", source.ErrInvalid, p)
		}
		if e.Version == version {
			return e, nil
		}
		if attempt > 0 {
			return e, fmt.Errorf("%w: %s has version %q, not %q", source.ErrVersionChanged, p, e.Version, version)
		}
		s.cfg.Listings.Invalidate(path.Dir("/" + p)[1:])
	}
}
