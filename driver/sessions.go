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

	"github.com/sluice-dev/sluice/internal/fusefs"
)

// Lock order: session.op before sessionManager.mu. mu is held only for
// short map and ref updates, never across a launch, a mount or a wait.

// refKind says why a path refers to a session.
type refKind string

const (
	refStage     refKind = "stage"     // a staging path bound to the session's mount
	refPublish   refKind = "publish"   // a target bound from a staging path (subPath)
	refEphemeral refKind = "ephemeral" // an inline volume's target bound to the session's mount
)

// ref is one path that refers to a session. Stage and ephemeral refs keep
// the session alive; publish refs are remembered for stats and re-binding.
type ref struct {
	Kind     refKind `json:"kind"`
	VolumeID string  `json:"volumeId"`
	Path     string  `json:"path"`
	SubPath  string  `json:"subPath,omitempty"`
	From     string  `json:"from,omitempty"` // publish: the staging path
}

// sessionRecord is the state file of one FUSE session. It holds no
// secrets: NeedsCreds says that a re-serve needs the volume's secrets,
// which only the next NodeStageVolume (or NodePublishVolume) brings. A
// dataset session (Dataset and Workers instead of Source) reads through
// the cache workers with the node's own token and never needs secrets.
type sessionRecord struct {
	Key       string `json:"key"`
	Source    string `json:"source,omitempty"`
	Dataset   string `json:"dataset,omitempty"` // namespace/name
	Workers   string `json:"workers,omitempty"` // host:port of the Dataset's workers
	CacheSize string `json:"cacheSize,omitempty"`
	Readahead string `json:"readahead,omitempty"`
	Dir       string `json:"dir"`
	CacheDir  string `json:"cacheDir"`
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	// Generation counts the children that served the current FUSE
	// connection (1: the one that mounted it).
	Generation int   `json:"generation,omitempty"`
	NeedsCreds bool  `json:"needsCredentials"`
	Refs       []ref `json:"refs"`
	// MountAt, when set, is where the child mounts: the staging path of a
	// staged volume. The kubelet unstages a volume only when no other
	// mount of its device exists (GetDeviceMountRefs), so a staged
	// session must not keep a mount of its own beside the staging path.
	MountAt string `json:"mountAt,omitempty"`
}

func (r *sessionRecord) mountDir() string {
	if r.MountAt != "" {
		return r.MountAt
	}
	return filepath.Join(r.Dir, "mnt")
}

// origin names what the session serves, for logs.
func (r *sessionRecord) origin() string {
	if r.Dataset != "" {
		return "dataset " + r.Dataset
	}
	return r.Source
}

func (r *sessionRecord) statsSocket() string { return filepath.Join(r.Dir, "stats.sock") }
func (r *sessionRecord) logFile() string     { return filepath.Join(r.Dir, "serve.log") }
func (r *sessionRecord) stateFile() string   { return filepath.Join(r.Dir, "session.json") }

// The serving child's handover files (fusefs.Handover), in the session's
// directory: the connection's INIT, the inode log and the handback socket.
func (r *sessionRecord) handoverFiles() []string {
	h := handoverIn(r.Dir)
	return []string{h.InitFile, h.InodeLog, h.OpenLog, h.HandbackSocket}
}
func (r *sessionRecord) handbackSocket() string { return handoverIn(r.Dir).HandbackSocket }

// handoverIn names the handover files in a session directory.
func handoverIn(dir string) fusefs.Handover {
	return fusefs.Handover{InitFile: filepath.Join(dir, "fuse-init"), InodeLog: filepath.Join(dir, "inodes"),
		OpenLog: filepath.Join(dir, "opens"), HandbackSocket: filepath.Join(dir, "fuse.sock")}
}

// refAt returns the ref at path, if any.
func (r *sessionRecord) refAt(path string) (ref, bool) {
	i := slices.IndexFunc(r.Refs, func(x ref) bool { return x.Path == path })
	if i < 0 {
		return ref{}, false
	}
	return r.Refs[i], true
}

// pinned reports whether a stage or ephemeral ref keeps the session alive.
func (r *sessionRecord) pinned() bool {
	return slices.ContainsFunc(r.Refs, func(x ref) bool { return x.Kind != refPublish })
}

// session is one FUSE session: a serving child and the paths bound to it.
type session struct {
	op    sync.Mutex    // serializes operations on this session
	rec   sessionRecord // refs change under op and the manager's mu
	creds credentials   // in memory only, for re-serving
	gone  bool          // stopped and removed from the manager
}

// launcher starts and supervises serving processes (procLauncher; a fake
// in unit tests).
type launcher interface {
	// start launches a child serving rec's source (or Dataset) at
	// rec.mountDir() and returns once it serves, recording its pid and
	// start time in rec.
	start(ctx context.Context, rec *sessionRecord, creds credentials) error
	// alive reports whether rec's child is running.
	alive(rec *sessionRecord) bool
	// stop ends rec's child (SIGTERM, then SIGKILL) and waits for it.
	stop(ctx context.Context, rec *sessionRecord) error
	// adopt takes over a live child that an earlier node process started
	// and returns the credentials it serves with (from its environment,
	// so that it can be served again if it dies; nothing is on disk).
	adopt(rec *sessionRecord) credentials
	// stats asks rec's child for its counters.
	stats(ctx context.Context, rec *sessionRecord) (sessionStats, error)
	// holds reports whether the launcher holds rec's live FUSE connection
	// (its /dev/fuse descriptor): then start hands it to the new child,
	// and nothing is mounted or bound again.
	holds(rec *sessionRecord) bool
	// release closes rec's FUSE descriptor.
	release(rec *sessionRecord)
}

// sessionStats are a session's counters.
type sessionStats struct {
	BytesServed int64 `json:"bytesServed"`
	OriginBytes int64 `json:"originBytes"`
	MemoryBytes int64 `json:"memoryBytes"`
	DiskBytes   int64 `json:"diskBytes"`
	DiskLimit   int64 `json:"diskLimit"`
}

// sessionManager owns the node's sessions and their state files.
type sessionManager struct {
	dir      string // <state-dir>/sessions
	cacheDir string // "" disables the disk tier
	launcher launcher
	mounter  mount.Interface
	unmount  func(path string) error // detaches lazily (mountutil.Unmount)

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

// acquire returns the session for key, locked, creating it from spec if
// create is set (nil if it does not exist and create is not set).
func (m *sessionManager) acquire(key string, spec *volumeSpec) *session {
	for {
		m.mu.Lock()
		s, ok := m.sessions[key]
		if !ok {
			if spec == nil {
				m.mu.Unlock()
				return nil
			}
			s = &session{rec: sessionRecord{
				Key: key, Source: spec.Source, Dataset: spec.Dataset, CacheSize: spec.CacheSize, Readahead: spec.Readahead,
				Dir: filepath.Join(m.dir, key),
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

// acquireByPath returns the locked session that has a ref at path.
func (m *sessionManager) acquireByPath(path string) (*session, ref) {
	for {
		m.mu.Lock()
		var found *session
		for _, s := range m.sessions {
			if _, ok := s.rec.refAt(path); ok {
				found = s
				break
			}
		}
		m.mu.Unlock()
		if found == nil {
			return nil, ref{}
		}
		found.op.Lock()
		if r, ok := found.rec.refAt(path); ok && !found.gone {
			return found, r
		}
		found.op.Unlock()
	}
}

// keyOfPath returns the key of the session with a ref at path ("" if none).
func (m *sessionManager) keyOfPath(path string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, s := range m.sessions {
		if _, ok := s.rec.refAt(path); ok {
			return k
		}
	}
	return ""
}

// setRef adds or replaces the ref at r.Path and saves the record.
func (m *sessionManager) setRef(s *session, r ref) error {
	m.mu.Lock()
	s.rec.Refs = slices.DeleteFunc(s.rec.Refs, func(x ref) bool { return x.Path == r.Path })
	s.rec.Refs = append(s.rec.Refs, r)
	m.mu.Unlock()
	return m.save(s)
}

// dropRef removes the ref at path and saves the record.
func (m *sessionManager) dropRef(s *session, path string) error {
	m.mu.Lock()
	s.rec.Refs = slices.DeleteFunc(s.rec.Refs, func(x ref) bool { return x.Path == path })
	m.mu.Unlock()
	return m.save(s)
}

func (m *sessionManager) save(s *session) error {
	if err := os.MkdirAll(s.rec.Dir, 0o700); err != nil {
		return err
	}
	m.mu.Lock()
	rec := s.rec
	rec.Refs = slices.Clone(s.rec.Refs)
	m.mu.Unlock()
	return writeJSON(rec.stateFile(), &rec)
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
	if m.launcher.holds(&s.rec) {
		// The connection lived on: its readers wait for the new child.
		err := m.launcher.start(ctx, &s.rec, s.creds)
		if err == nil {
			klog.InfoS("Serving process took the FUSE connection over", "session", s.rec.Key, "pid", s.rec.Pid,
				"generation", s.rec.Generation)
			return m.save(s)
		}
		klog.ErrorS(err, "Taking the FUSE connection over failed; mounting again", "session", s.rec.Key)
		m.launcher.release(&s.rec)
	}
	if err := m.detachIfMounted(s.rec.mountDir()); err != nil {
		return err
	}
	for _, d := range []string{s.rec.Dir, s.rec.mountDir()} {
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
	klog.InfoS("Serving session", "session", s.rec.Key, "source", s.rec.origin(), "pid", s.rec.Pid)
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
	for _, kinds := range [][]refKind{{refStage, refEphemeral}, {refPublish}} {
		for _, r := range s.rec.Refs {
			if !slices.Contains(kinds, r.Kind) {
				continue
			}
			if r.Path == s.rec.mountDir() {
				continue // the child's own mount point
			}
			from := filepath.Join(s.rec.mountDir(), r.SubPath)
			if r.Kind == refPublish {
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
	if err := m.detachIfMounted(s.rec.mountDir()); err != nil {
		return err
	}
	files := append(s.rec.handoverFiles(), s.rec.statsSocket(), s.rec.logFile(), s.rec.stateFile(), s.rec.Dir)
	if s.rec.MountAt == "" {
		files = append([]string{s.rec.mountDir()}, files...) // a staging path is the kubelet's to remove
	}
	for _, p := range files {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			klog.ErrorS(err, "Could not remove a session file", "path", p)
		}
	}
	m.mu.Lock()
	delete(m.sessions, s.rec.Key)
	s.gone = true
	m.mu.Unlock()
	klog.InfoS("Session stopped", "session", s.rec.Key, "source", s.rec.origin())
	return nil
}

// release stops s if nothing pins it any more.
func (m *sessionManager) release(ctx context.Context, s *session) error {
	if s.rec.pinned() {
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

// reconcile loads the state files: sessions whose child lives are adopted;
// dead ones are served again when they need no secrets (their paths
// re-bound), else their stale mount is detached and they wait for the next
// NodeStageVolume; sessions that nothing pins are stopped.
func (m *sessionManager) reconcile(ctx context.Context) error {
	files, err := filepath.Glob(filepath.Join(m.dir, "*", "session.json"))
	if err != nil {
		return err
	}
	for _, f := range files {
		s := &session{}
		if err := readJSON(f, &s.rec); err != nil {
			klog.ErrorS(err, "Skipping an unreadable session record", "file", f)
			continue
		}
		m.mu.Lock()
		m.sessions[s.rec.Key] = s
		m.mu.Unlock()
		s.op.Lock()
		switch {
		case !s.rec.pinned():
			err = m.stop(ctx, s)
		case s.rec.Pid != 0 && m.launcher.alive(&s.rec):
			s.creds = m.launcher.adopt(&s.rec)
			klog.InfoS("Adopted a serving session", "session", s.rec.Key, "pid", s.rec.Pid, "refs", len(s.rec.Refs))
		case s.rec.NeedsCreds:
			klog.InfoS("Session needs its volume's secrets to serve again; waiting for NodeStageVolume",
				"session", s.rec.Key, "source", s.rec.origin())
			s.rec.Pid = 0
			if err = m.detachIfMounted(s.rec.mountDir()); err == nil {
				err = m.save(s)
			}
		default:
			klog.InfoS("Serving a session again after its process died", "session", s.rec.Key, "source", s.rec.origin())
			err = m.ensureServing(ctx, s, credentials{})
		}
		s.op.Unlock()
		if err != nil {
			klog.ErrorS(err, "Reconciling a session", "session", s.rec.Key)
		}
	}
	return nil
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
			s := m.acquire(k, nil)
			if s == nil {
				continue
			}
			dead := s.rec.Pid == 0 || !m.launcher.alive(&s.rec)
			if s.rec.pinned() && dead && !(s.rec.NeedsCreds && s.creds.empty()) {
				klog.InfoS("Serving process died; serving again", "session", k, "pid", s.rec.Pid)
				if err := m.ensureServing(ctx, s, credentials{}); err != nil {
					klog.ErrorS(err, "Could not serve a session again", "session", k)
				}
			}
			s.op.Unlock()
		}
	}
}
