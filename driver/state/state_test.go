package state

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestSession(t *testing.T) {
	tests := []struct {
		name string
		// rec's Dir and MountAt are relative to the row's directory.
		rec        Session
		wantMount  string // relative to the row's directory
		wantPinned bool
		wantOrigin string
	}{
		{name: "source session with its own mount",
			rec: Session{Key: "k1", Source: "s3://b/p", Dir: "sessions/k1",
				Refs: []Ref{{Kind: RefEphemeral, VolumeID: "v", Path: "/pods/p/vol"}}},
			wantMount: "sessions/k1/mnt", wantPinned: true, wantOrigin: "s3://b/p"},
		{name: "staged session mounted at its staging path",
			rec: Session{Key: "k2", Source: "file:///srv", Dir: "sessions/k2", MountAt: "staging",
				Refs: []Ref{{Kind: RefStage, VolumeID: "v", Path: "staging"},
					{Kind: RefPublish, VolumeID: "v", Path: "/pods/p/vol", SubPath: "models", From: "staging"}}},
			wantMount: "staging", wantPinned: true, wantOrigin: "file:///srv"},
		{name: "dataset session with publish refs only",
			rec: Session{Key: "k3", Dataset: "ml/imagenet", Workers: "w.ml.svc:8080", Dir: "sessions/k3",
				Refs: []Ref{{Kind: RefPublish, VolumeID: "v", Path: "/pods/p/vol", From: "staging"}}},
			wantMount: "sessions/k3/mnt", wantPinned: false, wantOrigin: "dataset ml/imagenet"},
		{name: "no refs",
			rec:       Session{Key: "k4", Source: "https://example.com/f", Dir: "sessions/k4", NeedsCreds: true},
			wantMount: "sessions/k4/mnt", wantPinned: false, wantOrigin: "https://example.com/f"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rec := tc.rec
			rec.Dir = filepath.Join(dir, rec.Dir)
			if rec.MountAt != "" {
				rec.MountAt = filepath.Join(dir, rec.MountAt)
			}
			if got, want := rec.MountDir(), filepath.Join(dir, tc.wantMount); got != want {
				t.Errorf("MountDir() = %s, want %s", got, want)
			}
			if rec.Pinned() != tc.wantPinned {
				t.Errorf("Pinned() = %v, want %v", rec.Pinned(), tc.wantPinned)
			}
			if rec.Origin() != tc.wantOrigin {
				t.Errorf("Origin() = %q, want %q", rec.Origin(), tc.wantOrigin)
			}
			for _, r := range rec.Refs {
				if got, ok := rec.RefAt(r.Path); !ok || got != r {
					t.Errorf("RefAt(%s) = %+v, %v; want %+v", r.Path, got, ok, r)
				}
			}
			if _, ok := rec.RefAt("/nowhere"); ok {
				t.Error("RefAt found a ref at a path without one")
			}

			// Save and List give the record back; the file is the owner's only.
			if err := Save(&rec); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(rec.File()); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("record file: %v, %v; want mode 0600", fi, err)
			}
			got, err := List(filepath.Dir(rec.Dir))
			if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], rec) {
				t.Fatalf("List = %+v, %v; want [%+v]", got, err, rec)
			}

			// Remove clears the directory: every file the child leaves, the
			// record and the session's own mount point, never a staging path.
			if err := os.MkdirAll(rec.MountDir(), 0o755); err != nil {
				t.Fatal(err)
			}
			h := rec.Handover()
			for _, p := range []string{h.InitFile, h.InodeLog, h.OpenLog, h.HandbackSocket, rec.StatsSocket(), rec.LogFile()} {
				if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := Remove(&rec); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(rec.Dir); !os.IsNotExist(err) {
				t.Errorf("session directory left (%v)", err)
			}
			if _, err := os.Stat(rec.MountDir()); (rec.MountAt != "") != (err == nil) {
				t.Errorf("mount point %s: %v; want it removed unless it is a staging path", rec.MountDir(), err)
			}
			if err := Remove(&rec); err != nil {
				t.Errorf("removing again: %v; want no error", err)
			}
		})
	}
}

func TestListSkipsUnreadable(t *testing.T) {
	dir := t.TempDir()
	good := Session{Key: "good", Source: "file:///srv", Dir: filepath.Join(dir, "good")}
	if err := Save(&good); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "torn"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "torn", recordFile), []byte(`{"key": "to`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := List(dir)
	if err != nil || len(got) != 1 || got[0].Key != "good" {
		t.Fatalf("List = %+v, %v; want the readable record only", got, err)
	}
	if recs, err := List(filepath.Join(dir, "none")); err != nil || len(recs) != 0 {
		t.Errorf("List of a missing directory = %v, %v; want nothing", recs, err)
	}
}

func TestJSON(t *testing.T) {
	p := filepath.Join(t.TempDir(), "v.json")
	type rec struct{ A string }
	if err := WriteJSON(p, rec{A: "x"}); err != nil {
		t.Fatal(err)
	}
	var got rec
	if err := ReadJSON(p, &got); err != nil || got.A != "x" {
		t.Fatalf("ReadJSON = %+v, %v", got, err)
	}
	if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ReadJSON(p, &got); err == nil {
		t.Error("ReadJSON of a torn file: no error")
	}
}
