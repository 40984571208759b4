package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/sluice-dev/sluice/driver/state"
)

// Lock order: session.op before sessionManager.mu. mu is held only for
// short map and ref updates, never across a launch, a mount or a wait.

// session is one FUSE session: a serving child and the paths bound to it.
type session struct {
	op    sync.Mutex    // serializes operations on this session
	rec   state.Session // refs change under op and the manager's mu
	creds credentials   // in memory only, for re-serving
	gone  bool          // stopped and removed from the manager
}

// release ends the operation on s that acquire or acquireByPath began. A
// nil s (none found) is no operation, so that an RPC can defer release
// right after acquiring, whatever it found.
func (s *session) release() {
	if s != nil {
		s.op.Unlock()
	}
}

// launcher starts and supervises serving children (procLauncher; a fake
// in unit tests).
type launcher interface {
	// start launches a child serving rec's source (or Dataset) at
	// rec.MountDir() and returns once it serves, recording its pid, start
	// time and generation in rec.
	start(ctx context.Context, rec *state.Session, creds credentials) error
	// alive reports whether rec's child is running.
	alive(rec *state.Session) bool
	// stop ends rec's child (SIGTERM, then SIGKILL) and waits for it.
	stop(ctx context.Context, rec *state.Session) error
	// adopt takes over a live child that an earlier node process started
	// and returns the credentials it serves with (from its environment,
	// so that it can be served again if it dies; nothing is on disk).
	adopt(rec *state.Session) credentials
	// stats asks rec's child for its counters.
	stats(ctx context.Context, rec *state.Session) (sessionStats, error)
}

// connKeeper keeps the sessions' live FUSE connections, their /dev/fuse
// descriptors, across the death of a serving child (fdKeeper; a fake in
// unit tests).
type connKeeper interface {
	// holds reports whether the live FUSE connection of session key is
	// kept: then the launcher hands it to the new child, and nothing is
	// mounted or bound again.
	holds(key string) bool
	// drop closes session key's descriptor.
	drop(key string)
}

// sessionStats are a session's counters.
type sessionStats struct {
	BytesServed int64 `json:"bytesServed"`
	OriginBytes int64 `json:"originBytes"`
	MemoryBytes int64 `json:"memoryBytes"`
	DiskBytes   int64 `json:"diskBytes"`
	DiskLimit   int64 `json:"diskLimit"`
	// Health is what the session's last health probe found (health.go).
	Health []healthEntry `json:"health,omitempty"`
}

// sessionDeps are what the sessions are served and mounted with.
type sessionDeps struct {
	launcher launcher
	conns    connKeeper
	mounter  mount.Interface
	unmount  func(path string) error // detaches lazily (mountutil.Unmount)
}

// sessionManager owns the node's sessions and their records.
type sessionManager struct {
	dir      string // <state-dir>/sessions
	cacheDir string // "" disables the disk tier
	sessionDeps

	mu       sync.Mutex
	sessions map[string]*session
}

// sessionKey names the session of a source read with creds: volumes that
// share source and credentials share one FUSE session and its cache; other
// credentials get their own session, so a volume never reads through
// someone else's keys. Only a truncated hash of the keys is kept.
func sessionKey(src string, c credentials) string {
	h := sha256.New()
	for _, s := range []string{src, c.AccessKeyID, c.SecretAccessKey} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// acquire begins an operation on the session for key: it returns the
// session locked, creating it from spec if there is none (nil if there is
// none and spec is nil). The caller defers s.release().
func (m *sessionManager) acquire(key string, spec *volumeSpec) *session {
	for {
		m.mu.Lock()
		s, ok := m.sessions[key]
		if !ok {
			if spec == nil {
				m.mu.Unlock()
				return nil
			}
			s = &session{rec: state.Session{
				Key: key, Source: spec.Source, Dataset: spec.Dataset, CacheSize: spec.CacheSize, Readahead: spec.Readahead,
				SmallFiles: spec.SmallFiles, Dir: filepath.Join(m.dir, key),
			}}
			if m.cacheDir != "" {
				s.rec.CacheDir = filepath.Join(m.cacheDir, key)
			}
			m.sessions[key] = s
		}
		m.mu.Unlock()
		s.op.Lock()
		if !s.gone {
			return s
		}
		s.op.Unlock()
	}
}

// acquireByPath begins an operation on the session that has a ref at
// path: it returns the session locked and the ref (nil if no session has
// one). The caller defers s.release().
func (m *sessionManager) acquireByPath(path string) (*session, state.Ref) {
	for {
		m.mu.Lock()
		var found *session
		for _, s := range m.sessions {
			if _, ok := s.rec.RefAt(path); ok {
				found = s
				break
			}
		}
		m.mu.Unlock()
		if found == nil {
			return nil, state.Ref{}
		}
		found.op.Lock()
		if r, ok := found.rec.RefAt(path); ok && !found.gone {
			return found, r
		}
		found.op.Unlock()
	}
}

// recordAt returns a copy of the record of the session that has a ref of
// volumeID at path (false if none has).
func (m *sessionManager) recordAt(path, volumeID string) (state.Session, bool) {
	s, r := m.acquireByPath(path)
	defer s.release()
	if s == nil || r.VolumeID != volumeID {
		return state.Session{}, false
	}
	return s.rec, true
}

// recordOfVolume returns a copy of the record of a session that has a ref
// of volumeID at any path (false if none has).
func (m *sessionManager) recordOfVolume(volumeID string) (state.Session, bool) {
	m.mu.Lock()
	var paths []string
	for _, s := range m.sessions {
		for _, r := range s.rec.Refs {
			if r.VolumeID == volumeID {
				paths = append(paths, r.Path)
			}
		}
	}
	m.mu.Unlock()
	for _, p := range paths {
		if rec, ok := m.recordAt(p, volumeID); ok {
			return rec, true
		}
	}
	return state.Session{}, false
}

// keyOfPath returns the key of the session with a ref at path ("" if none).
func (m *sessionManager) keyOfPath(path string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, s := range m.sessions {
		if _, ok := s.rec.RefAt(path); ok {
			return k
		}
	}
	return ""
}

// setRef adds or replaces the ref at r.Path and saves the record.
func (m *sessionManager) setRef(s *session, r state.Ref) error {
	m.mu.Lock()
	s.rec.Refs = slices.DeleteFunc(s.rec.Refs, func(x state.Ref) bool { return x.Path == r.Path })
	s.rec.Refs = append(s.rec.Refs, r)
	m.mu.Unlock()
	return m.save(s)
}

// dropRef removes the ref at path and saves the record.
func (m *sessionManager) dropRef(s *session, path string) error {
	m.mu.Lock()
	s.rec.Refs = slices.DeleteFunc(s.rec.Refs, func(x state.Ref) bool { return x.Path == path })
	m.mu.Unlock()
	return m.save(s)
}

// save writes s's record (a copy taken under mu).
func (m *sessionManager) save(s *session) error {
	m.mu.Lock()
	rec := s.rec
	rec.Refs = slices.Clone(s.rec.Refs)
	m.mu.Unlock()
	return state.Save(&rec)
}

// ensureServing (re)starts s's child unless it is alive, then re-binds
// every path bound to the session (after a restart those binds point at
// the dead connection). creds, when given, replace the remembered ones.
func (m *sessionManager) ensureServing(ctx context.Context, s *session, creds credentials) error {
	if !creds.empty() {
		s.creds = creds
	}
	if s.rec.Pid != 0 && m.launcher.alive(&s.rec) {
		return nil
	}
	if s.rec.NeedsCreds && s.creds.empty() {
		return fmt.Errorf("%w: session %s needs the volume's secrets to be served again", errPrecondition, s.rec.Key)
	}
	s.rec.NeedsCreds = !s.creds.empty()
	if m.conns.holds(s.rec.Key) {
		// The connection lived on: its readers wait for the new child.
		err := m.launcher.start(ctx, &s.rec, s.creds)
		if err == nil {
			klog.InfoS("Serving process took the FUSE connection over", "session", s.rec.Key, "pid", s.rec.Pid,
				"generation", s.rec.Generation)
			return m.save(s)
		}
		klog.ErrorS(err, "Taking the FUSE connection over failed; mounting again", "session", s.rec.Key)
		m.conns.drop(s.rec.Key)
	}
	if err := m.detachIfMounted(s.rec.MountDir()); err != nil {
		return err
	}
	for _, d := range []string{s.rec.Dir, s.rec.MountDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if s.rec.CacheDir != "" {
		if err := os.MkdirAll(s.rec.CacheDir, 0o700); err != nil {
			return err
		}
	}
	if err := m.launcher.start(ctx, &s.rec, s.creds); err != nil {
		s.rec.Pid = 0
		return err
	}
	klog.InfoS("Serving session", "session", s.rec.Key, "source", s.rec.Origin(), "pid", s.rec.Pid)
	if err := m.save(s); err != nil {
		return err
	}
	return m.rebind(s)
}

// rebind binds every ref of s again: staging paths and ephemeral targets
// from the session's mount, then published targets from their staging
// paths.
func (m *sessionManager) rebind(s *session) error {
	var errs []error
	for _, kinds := range [][]state.RefKind{{state.RefStage, state.RefEphemeral}, {state.RefPublish}} {
		for _, r := range s.rec.Refs {
			if !slices.Contains(kinds, r.Kind) {
				continue
			}
			if r.Path == s.rec.MountDir() {
				continue // the child's own mount point
			}
			from := filepath.Join(s.rec.MountDir(), r.SubPath)
			if r.Kind == state.RefPublish {
				from = filepath.Join(r.From, r.SubPath)
			}
			if err := m.detachIfMounted(r.Path); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := m.bind(from, r.Path); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// stop ends s's child, detaches its mount, removes its files and forgets
// it. The caller holds s.op and no ref pins s.
func (m *sessionManager) stop(ctx context.Context, s *session) error {
	if s.rec.Pid != 0 {
		if err := m.launcher.stop(ctx, &s.rec); err != nil {
			return fmt.Errorf("stopping session %s: %w", s.rec.Key, err)
		}
	}
	if err := m.detachIfMounted(s.rec.MountDir()); err != nil {
		return err
	}
	if err := state.Remove(&s.rec); err != nil {
		klog.ErrorS(err, "Could not remove a session file", "session", s.rec.Key)
	}
	m.mu.Lock()
	delete(m.sessions, s.rec.Key)
	s.gone = true
	m.mu.Unlock()
	klog.InfoS("Session stopped", "session", s.rec.Key, "source", s.rec.Origin())
	return nil
}

// stopUnlessPinned stops s if nothing pins it any more.
func (m *sessionManager) stopUnlessPinned(ctx context.Context, s *session) error {
	if s.rec.Pinned() {
		return nil
	}
	return m.stop(ctx, s)
}

// mounted reports whether path is a mount point; a stale mount (its FUSE
// server gone) counts as mounted.
func (m *sessionManager) mounted(path string) (bool, error) {
	notMnt, err := m.mounter.IsLikelyNotMountPoint(path)
	switch {
	case err == nil:
		return !notMnt, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	case mount.IsCorruptedMnt(err):
		return true, nil
	default:
		return false, fmt.Errorf("checking mount point %s: %w", path, err)
	}
}

func (m *sessionManager) detachIfMounted(path string) error {
	mnt, err := m.mounted(path)
	if err != nil || !mnt {
		return err
	}
	if err := m.unmount(path); err != nil {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	return nil
}

// bind mounts from at target, read-only.
func (m *sessionManager) bind(from, target string) error {
	if err := m.mounter.Mount(from, target, "", []string{"bind", "ro"}); err != nil {
		return fmt.Errorf("bind-mounting %s at %s: %w", from, target, err)
	}
	return nil
}

// reconcile loads the session records: sessions whose child lives are
// adopted; dead ones are served again when they need no secrets (their
// paths re-bound), else their stale mount is detached and they wait for
// the next NodeStageVolume; sessions that nothing pins are stopped.
func (m *sessionManager) reconcile(ctx context.Context) error {
	recs, err := state.List(m.dir)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if err := m.restore(ctx, rec); err != nil {
			klog.ErrorS(err, "Reconciling a session", "session", rec.Key)
		}
	}
	return nil
}

// restore takes over one session that rec records (see reconcile).
func (m *sessionManager) restore(ctx context.Context, rec state.Session) error {
	s := &session{rec: rec}
	m.mu.Lock()
	m.sessions[rec.Key] = s
	m.mu.Unlock()
	s.op.Lock()
	defer s.release()
	switch {
	case !s.rec.Pinned():
		return m.stop(ctx, s)
	case s.rec.Pid != 0 && m.launcher.alive(&s.rec):
		s.creds = m.launcher.adopt(&s.rec)
		klog.InfoS("Adopted a serving session", "session", s.rec.Key, "pid", s.rec.Pid, "refs", len(s.rec.Refs))
		return nil
	case s.rec.NeedsCreds:
		klog.InfoS("Session needs its volume's secrets to serve again; waiting for NodeStageVolume",
			"session", s.rec.Key, "source", s.rec.Origin())
		s.rec.Pid = 0
		if err := m.detachIfMounted(s.rec.MountDir()); err != nil {
			return err
		}
		return m.save(s)
	default:
		klog.InfoS("Serving a session again after its process died", "session", s.rec.Key, "source", s.rec.Origin())
		return m.ensureServing(ctx, s, credentials{})
	}
}

// watch serves sessions again whose child died while this process runs
// (the secrets are in memory), every tick and whenever wake says a child
// exited, until ctx is done.
func (m *sessionManager) watch(ctx context.Context, every time.Duration, wake <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
		m.mu.Lock()
		keys := make([]string, 0, len(m.sessions))
		for k := range m.sessions {
			keys = append(keys, k)
		}
		m.mu.Unlock()
		for _, k := range keys {
			m.serveIfDead(ctx, k)
		}
	}
}

// serveIfDead serves session key again if its child died, something pins
// it and its secrets (if it needs any) are in memory.
func (m *sessionManager) serveIfDead(ctx context.Context, key string) {
	s := m.acquire(key, nil)
	defer s.release()
	if s == nil {
		return
	}
	dead := s.rec.Pid == 0 || !m.launcher.alive(&s.rec)
	if s.rec.Pinned() && dead && !(s.rec.NeedsCreds && s.creds.empty()) {
		klog.InfoS("Serving process died; serving again", "session", key, "pid", s.rec.Pid)
		if err := m.ensureServing(ctx, s, credentials{}); err != nil {
			klog.ErrorS(err, "Could not serve a session again", "session", key)
		}
	}
}
