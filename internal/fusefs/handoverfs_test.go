package fusefs

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// recordingFS stands in for go-fuse's bridge: it knows node ids after a
// lookup, hands out handles from 1 and records forgets and releases.
type recordingFS struct {
	fuse.RawFileSystem
	mu       sync.Mutex
	forgets  map[uint64]uint64
	released []uint64
	opens    int
	nextFh   uint64
	// openFlags and backing are what the next Open answers.
	openFlags uint32
	backing   int32
}

func (r *recordingFS) Lookup(_ <-chan struct{}, hdr *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if name == "." {
		out.NodeId = hdr.NodeId
	} else {
		out.NodeId = 100 + uint64(len(name))
	}
	return fuse.OK
}

func (r *recordingFS) Forget(id, n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forgets[id] += n
}

func (r *recordingFS) Open(_ <-chan struct{}, _ *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opens++
	r.nextFh++
	out.Fh, out.OpenFlags, out.BackingID = r.nextFh, r.openFlags, r.backing
	return fuse.OK
}

func (r *recordingFS) Read(_ <-chan struct{}, in *fuse.ReadIn, _ []byte) (fuse.ReadResult, fuse.Status) {
	return fuse.ReadResultData([]byte{byte(in.Fh)}), fuse.OK
}

// ReadDirPlus lists ".", "a" (node 201), a name of 13 bytes (node 202, its
// record padded) and "gone" (a failed lookup: node id 0).
func (r *recordingFS) ReadDirPlus(_ <-chan struct{}, _ *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	for _, e := range []struct {
		name string
		id   uint64
	}{{".", 0}, {"a", 201}, {"thirteen-byte", 202}, {"gone", 0}} {
		eo := out.AddDirLookupEntry(fuse.DirEntry{Name: e.name, Mode: syscall.S_IFREG})
		eo.NodeId = e.id
	}
	return fuse.OK
}

func (r *recordingFS) Release(_ <-chan struct{}, in *fuse.ReleaseIn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.released = append(r.released, in.Fh)
}

func TestHandoverFSCountsAndHandles(t *testing.T) {
	inner := &recordingFS{forgets: map[uint64]uint64{}}
	h := newHandoverFS(inner, 2, nil, false)
	var e fuse.EntryOut
	h.Lookup(nil, &fuse.InHeader{NodeId: 1}, "abc", &e) // node 103, count 1
	h.Lookup(nil, &fuse.InHeader{NodeId: 1}, "abc", &e) // count 2

	// A read on node 7 and handle 5 from the dead generation 1: node 7 is
	// looked up as ".", the handle opened again (once) under the bridge.
	const foreign = 1<<48 | 5
	for i := 0; i < 2; i++ {
		in := &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: 7}, Fh: foreign}
		if _, st := h.Read(nil, in, nil); !st.Ok() || in.Fh != 1 {
			t.Fatalf("read %d on a foreign handle: %v, bridge handle %d", i, st, in.Fh)
		}
	}
	var oo fuse.OpenOut
	h.Open(nil, &fuse.OpenIn{InHeader: fuse.InHeader{NodeId: 103}}, &oo)
	if oo.Fh>>48 != 2 || inner.opens != 2 {
		t.Fatalf("issued handle %#x (opens %d); want generation 2 in the top bits", oo.Fh, inner.opens)
	}

	tests := []struct {
		id, n, want uint64
	}{
		{103, 5, 2}, // the kernel's count includes the dead generation's lookups: trimmed
		{103, 1, 2}, // nothing left to forget
		{7, 3, 1},   // looked up once as "."
		{42, 1, 0},  // never seen
	}
	for _, tc := range tests {
		h.Forget(tc.id, tc.n)
		if got := inner.forgets[tc.id]; got != tc.want {
			t.Errorf("after Forget(%d, %d): bridge forgot %d in all, want %d", tc.id, tc.n, got, tc.want)
		}
	}

	h.Release(nil, &fuse.ReleaseIn{Fh: foreign})   // reopened: released under the bridge's handle
	h.Release(nil, &fuse.ReleaseIn{Fh: 1<<48 | 9}) // never reopened: nothing to release
	h.Release(nil, &fuse.ReleaseIn{Fh: oo.Fh})     // ours
	if _, st := h.Read(nil, &fuse.ReadIn{Fh: oo.Fh}, nil); st != fuse.EBADF {
		t.Errorf("read on a released handle of this generation: %v, want EBADF", st)
	}
	if len(inner.released) != 2 || inner.released[0] != 1 || inner.released[1] != 2 {
		t.Errorf("bridge releases %v, want [1 2]", inner.released)
	}
}

// TestHandoverFSCountsReadDirPlus: the node ids of a READDIRPLUS reply are
// counted like LOOKUPs', so their FORGETs reach the bridge.
func TestHandoverFSCountsReadDirPlus(t *testing.T) {
	inner := &recordingFS{forgets: map[uint64]uint64{}}
	h := newHandoverFS(inner, 2, nil, false)
	for range 2 {
		out := fuse.NewDirEntryList(make([]byte, 4096), 0)
		if st := h.ReadDirPlus(nil, &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: fuse.FUSE_ROOT_ID}}, out); !st.Ok() {
			t.Fatal(st)
		}
	}
	for _, tc := range []struct{ id, n, want uint64 }{{201, 5, 2}, {202, 1, 1}, {0, 1, 0}} {
		h.Forget(tc.id, tc.n)
		if got := inner.forgets[tc.id]; got != tc.want {
			t.Errorf("after Forget(%d, %d): bridge forgot %d, want %d", tc.id, tc.n, got, tc.want)
		}
	}
}

func TestInodeLogSkipsTornLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "inodes")
	l, err := openInodeLog(p)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range []inodeRecord{{true, "a"}, {false, "a/b c\nd"}} {
		if err := l.record(uint64(10+i), r.dir, r.path); err != nil {
			t.Fatal(err)
		}
	}
	l.close()
	f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("f 12 \"torn") // a writer killed mid-record
	f.Close()
	l, err = openInodeLog(p)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	for ino, want := range map[uint64]inodeRecord{10: {true, "a"}, 11: {false, "a/b c\nd"}} {
		if got, ok := l.resolve(ino); !ok || got != want {
			t.Errorf("resolve(%d) = %+v, %v; want %+v", ino, got, ok, want)
		}
	}
	if _, ok := l.resolve(12); ok {
		t.Error("a torn record was loaded")
	}
}

func TestHandoverFSSettlesIOModes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "opens")
	prev, err := openOpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	// Generation 1 left node 7 open in passthrough mode (backing 5) and
	// node 8 in cached mode, then died.
	prev.opened(1<<48|1, openRecord{node: 7, backing: 5})
	prev.opened(1<<48|2, openRecord{node: 8})
	prev.opened(1<<48|3, openRecord{node: 9})
	prev.released(1<<48 | 3)
	prev.close()
	opens, err := openOpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer opens.close()
	inner := &recordingFS{forgets: map[uint64]uint64{}}
	h := newHandoverFS(inner, 2, opens, false)
	const pt, keep = fuse.FOPEN_PASSTHROUGH, fuse.FOPEN_KEEP_CACHE
	tests := []struct {
		name         string
		node         uint64
		flags        uint32 // the bridge's answer
		backing      int32
		wantFlags    uint32
		wantBacking  int32
		releaseFirst uint64 // a kernel handle released before this open
	}{
		{"open in passthrough: its backing file, whatever the bridge says", 7, keep, 0, pt, 5, 0},
		{"open in cached mode: no passthrough", 8, pt, 9, keep, 0, 0},
		{"released in generation 1: the bridge decides", 9, pt, 11, pt, 11, 0},
		{"cached mode again while the first is open", 8, pt, 9, keep, 0, 1<<48 | 2},
	}
	var ours []uint64
	for _, tc := range tests {
		if tc.releaseFirst != 0 {
			h.Release(nil, &fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: tc.node}, Fh: tc.releaseFirst})
		}
		inner.openFlags, inner.backing = tc.flags, tc.backing
		var out fuse.OpenOut
		if st := h.Open(nil, &fuse.OpenIn{InHeader: fuse.InHeader{NodeId: tc.node}}, &out); !st.Ok() {
			t.Fatalf("%s: %v", tc.name, st)
		}
		if out.OpenFlags != tc.wantFlags || out.BackingID != tc.wantBacking {
			t.Errorf("%s: flags %#x backing %d, want %#x %d", tc.name, out.OpenFlags, out.BackingID, tc.wantFlags, tc.wantBacking)
		}
		ours = append(ours, out.Fh)
	}
	// Node 8's opens, all closed: passthrough is possible again.
	h.Release(nil, &fuse.ReleaseIn{Fh: ours[1]})
	h.Release(nil, &fuse.ReleaseIn{Fh: ours[3]})
	inner.openFlags, inner.backing = pt, 12
	var out fuse.OpenOut
	h.Open(nil, &fuse.OpenIn{InHeader: fuse.InHeader{NodeId: 8}}, &out)
	if out.OpenFlags != pt || out.BackingID != 12 {
		t.Errorf("node 8 after its cached-mode files closed: flags %#x backing %d, want passthrough with 12", out.OpenFlags, out.BackingID)
	}
	// A successor of this process sees what is still open.
	live := opens.snapshot()
	want := map[uint64]openRecord{1<<48 | 1: {7, 5}, ours[0]: {7, 5}, ours[2]: {9, 11}, out.Fh: {8, 12}}
	if len(live) != len(want) {
		t.Fatalf("open log has %v, want %v", live, want)
	}
	for fh, r := range want {
		if live[fh] != r {
			t.Errorf("open log: handle %#x is %+v, want %+v", fh, live[fh], r)
		}
	}
}

func TestOpenLogCompacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "opens")
	l, err := openOpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	l.opened(1, openRecord{node: 2, backing: 3})
	for fh := uint64(10); fh < 10010; fh++ {
		l.opened(fh, openRecord{node: fh})
		l.released(fh)
	}
	l.close()
	if st, err := os.Stat(path); err != nil || st.Size() > 64<<10 {
		t.Fatalf("open log after 10,000 opens and releases: %v, %d bytes; want it compacted", err, st.Size())
	}
	l, err = openOpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	if live := l.snapshot(); len(live) != 1 || live[1] != (openRecord{2, 3}) {
		t.Errorf("live handles after compaction: %v", live)
	}
}

// TestPlainHandoverFSPassesThrough: on a mount that is never handed over,
// node ids and handles are the bridge's own and go through untouched,
// forgets are not trimmed, and the io modes of open files are still kept.
func TestPlainHandoverFSPassesThrough(t *testing.T) {
	inner := &recordingFS{forgets: map[uint64]uint64{}, openFlags: fuse.FOPEN_PASSTHROUGH, backing: 4}
	h := newHandoverFS(inner, 1, nil, true)
	var oo fuse.OpenOut
	h.Open(nil, &fuse.OpenIn{InHeader: fuse.InHeader{NodeId: 103}}, &oo)
	if oo.Fh != 1 {
		t.Fatalf("issued handle %#x; want the bridge's own (1)", oo.Fh)
	}
	in := &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: 103}, Fh: oo.Fh}
	if _, st := h.Read(nil, in, nil); !st.Ok() || in.Fh != 1 || inner.opens != 1 {
		t.Fatalf("read: %v, handle %d, opens %d; want it passed through", st, in.Fh, inner.opens)
	}
	h.Forget(103, 5) // never counted here: forwarded as is
	if inner.forgets[103] != 5 {
		t.Errorf("bridge forgot %d, want 5", inner.forgets[103])
	}
	if h.cachedOpen(103) {
		t.Error("a passthrough open counted as cached")
	}
	var cached fuse.OpenOut
	inner.openFlags, inner.backing = 0, 0
	h.Open(nil, &fuse.OpenIn{InHeader: fuse.InHeader{NodeId: 103}}, &cached)
	if cached.OpenFlags&fuse.FOPEN_PASSTHROUGH == 0 || cached.BackingID != 4 {
		t.Errorf("second open flags %#x backing %d; want it to match the open passthrough file", cached.OpenFlags, cached.BackingID)
	}
	h.Release(nil, &fuse.ReleaseIn{Fh: oo.Fh})
	h.Release(nil, &fuse.ReleaseIn{Fh: cached.Fh})
	if len(inner.released) != 2 || len(h.modes) != 0 {
		t.Errorf("releases %v, io modes left %v; want both released and none left", inner.released, h.modes)
	}
}
