// Package state is what the CSI driver keeps on disk across its restarts,
// as JSON files written atomically (internal/atomicfile) and readable by
// their owner only; no file ever holds a secret.
//
// The node keeps one Session record per FUSE session, in the session's own
// directory (<state-dir>/sessions/<key>/session.json). The package also
// names the other files of that directory — the serving child's log, stats
// socket and handover files, and the mount point of a session that is not
// mounted at a staging path — so that one place knows what the directory
// holds and Remove can clear it. The controller keeps its volume records
// with WriteJSON and ReadJSON.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/atomicfile"
	"github.com/sluice-dev/sluice/internal/fusefs"
)

// RefKind says why a path refers to a session.
type RefKind string

const (
	RefStage     RefKind = "stage"     // a staging path bound to the session's mount
	RefPublish   RefKind = "publish"   // a target bound from a staging path (subPath)
	RefEphemeral RefKind = "ephemeral" // an inline volume's target bound to the session's mount
)

// Ref is one path that refers to a session. Stage and ephemeral refs keep
// the session alive; publish refs are remembered for stats and re-binding.
type Ref struct {
	Kind     RefKind `json:"kind"`
	VolumeID string  `json:"volumeId"`
	Path     string  `json:"path"`
	SubPath  string  `json:"subPath,omitempty"`
	From     string  `json:"from,omitempty"` // publish: the staging path
}

// Session is the record of one FUSE session. It holds no secrets:
// NeedsCreds says that a re-serve needs the volume's secrets, which only
// the next NodeStageVolume (or NodePublishVolume) brings. A dataset
// session (Dataset and Workers instead of Source) reads through the cache
// workers with the node's own token and never needs secrets.
type Session struct {
	Key       string `json:"key"`
	Source    string `json:"source,omitempty"`
	Dataset   string `json:"dataset,omitempty"` // namespace/name
	Workers   string `json:"workers,omitempty"` // host:port of the Dataset's workers
	CacheSize string `json:"cacheSize,omitempty"`
	Readahead string `json:"readahead,omitempty"`
	// SmallFiles: served with --small-files (volattr.Spec.SmallFiles).
	SmallFiles bool   `json:"smallFiles,omitempty"`
	Dir        string `json:"dir"` // the session's directory
	CacheDir   string `json:"cacheDir"`
	Pid        int    `json:"pid"`
	StartTime  uint64 `json:"startTime"`
	// Generation counts the children that served the current FUSE
	// connection (1: the one that mounted it).
	Generation int   `json:"generation,omitempty"`
	NeedsCreds bool  `json:"needsCredentials"`
	Refs       []Ref `json:"refs"`
	// MountAt, when set, is where the child mounts: the staging path of a
	// staged volume. The kubelet unstages a volume only when no other
	// mount of its device exists (GetDeviceMountRefs), so a staged
	// session must not keep a mount of its own beside the staging path.
	MountAt string `json:"mountAt,omitempty"`
}

// recordFile is the name of a session's record in its directory.
const recordFile = "session.json"

// MountDir is where the session's child mounts: MountAt, else mnt in the
// session's directory.
func (r *Session) MountDir() string {
	if r.MountAt != "" {
		return r.MountAt
	}
	return filepath.Join(r.Dir, "mnt")
}

// Origin names what the session serves, for logs.
func (r *Session) Origin() string {
	if r.Dataset != "" {
		return "dataset " + r.Dataset
	}
	return r.Source
}

// File is the session's record.
func (r *Session) File() string { return filepath.Join(r.Dir, recordFile) }

// StatsSocket is where the child serves /stats and /metrics.
func (r *Session) StatsSocket() string { return filepath.Join(r.Dir, "stats.sock") }

// LogFile is the child's output.
func (r *Session) LogFile() string { return filepath.Join(r.Dir, "serve.log") }

// Handover names the child's handover files (fusefs.Handover).
func (r *Session) Handover() fusefs.Handover { return HandoverIn(r.Dir) }

// HandoverIn names the handover files in a session directory: the
// connection's INIT, the inode log, the open log and the handback socket.
func HandoverIn(dir string) fusefs.Handover {
	return fusefs.Handover{InitFile: filepath.Join(dir, "fuse-init"), InodeLog: filepath.Join(dir, "inodes"),
		OpenLog: filepath.Join(dir, "opens"), HandbackSocket: filepath.Join(dir, "fuse.sock")}
}

// RefAt returns the ref at path, if any.
func (r *Session) RefAt(path string) (Ref, bool) {
	i := slices.IndexFunc(r.Refs, func(x Ref) bool { return x.Path == path })
	if i < 0 {
		return Ref{}, false
	}
	return r.Refs[i], true
}

// Pinned reports whether a stage or ephemeral ref keeps the session alive.
func (r *Session) Pinned() bool {
	return slices.ContainsFunc(r.Refs, func(x Ref) bool { return x.Kind != RefPublish })
}

// Save writes rec to its file, creating the session's directory.
func Save(rec *Session) error {
	if err := os.MkdirAll(rec.Dir, 0o700); err != nil {
		return err
	}
	return WriteJSON(rec.File(), rec)
}

// List reads the records of the session directories in dir. An
// unreadable record is logged and skipped: it must not keep the others
// from being served.
func List(dir string) ([]Session, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*", recordFile))
	if err != nil {
		return nil, err
	}
	var recs []Session
	for _, f := range files {
		var rec Session
		if err := ReadJSON(f, &rec); err != nil {
			klog.ErrorS(err, "Skipping an unreadable session record", "file", f)
			continue
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// Remove removes the session's files, its record and its directory. The
// mount point goes too unless it is a staging path (MountAt: the
// kubelet's to remove). Nothing may be mounted there any more. Files
// already gone are no error; the others are reported and the rest removed.
func Remove(rec *Session) error {
	var files []string
	if rec.MountAt == "" {
		files = append(files, rec.MountDir())
	}
	h := rec.Handover()
	files = append(files, h.InitFile, h.InodeLog, h.OpenLog, h.HandbackSocket,
		rec.StatsSocket(), rec.LogFile(), rec.File(), rec.Dir)
	var errs []error
	for _, p := range files {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// WriteJSON writes v to path atomically (temporary file, fsync, rename),
// readable by its owner only.
func WriteJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(data, '\n'), 0o600)
}

// ReadJSON reads the JSON file at path into v.
func ReadJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
