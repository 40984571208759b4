package fusefs

import (
	"os"
	"path/filepath"
	"sync"
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
	out.Fh = r.nextFh
	return fuse.OK
}

func (r *recordingFS) Read(_ <-chan struct{}, in *fuse.ReadIn, _ []byte) (fuse.ReadResult, fuse.Status) {
	return fuse.ReadResultData([]byte{byte(in.Fh)}), fuse.OK
}

func (r *recordingFS) Release(_ <-chan struct{}, in *fuse.ReleaseIn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.released = append(r.released, in.Fh)
}

func TestHandoverFSCountsAndHandles(t *testing.T) {
	inner := &recordingFS{forgets: map[uint64]uint64{}}
	h := newHandoverFS(inner, 2)
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
