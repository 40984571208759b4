package fusefs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"k8s.io/klog/v2"
)

// handoverFS sits between go-fuse's server and its node bridge so that a
// process can take over a live FUSE connection from one that died. The
// kernel then holds node ids and file handles this process never handed
// out, and lookup counts it never saw; the bridge panics on all three.
//
//   - Node ids: the bridge's lookup count of every node id is mirrored in
//     counts (all LOOKUP replies pass here; READDIRPLUS is off). Before a
//     request on an id with no count, the id is looked up as "." — the
//     bridge asks the root's LookupNode, which finds the path in the inode
//     log. FORGET is trimmed to the count, so the kernel's references from
//     the dead process never underflow the bridge.
//   - File handles: handles given to the kernel carry this process's
//     generation in their top 16 bits and map to the bridge's. A handle of
//     another generation is opened again on first use; its RELEASE is
//     answered here.
//   - IO modes: the kernel refuses (EIO) to open a file in passthrough
//     mode while the inode has files open in cached mode, or with another
//     backing file than its open passthrough files, and to open it in
//     cached mode while it has passthrough files open. The mode of every
//     file the kernel has open, this process's and the dead one's (from
//     the open log), is counted per node, and each open answered to match.
type handoverFS struct {
	fuse.RawFileSystem
	gen   uint64   // << 48
	opens *openLog // nil: not taken over, nor to be

	mu      sync.RWMutex          // read-locked on the read path
	counts  map[uint64]uint64     // node id → lookups the bridge holds
	fhs     map[uint64]uint64     // kernel handle → bridge handle
	handles map[uint64]openRecord // kernel file handle → its open
	modes   map[uint64]*ioMode    // node id → its open files' io mode
	nextFh  uint64
}

// ioMode counts a node's files open in each io mode.
type ioMode struct {
	cached, passthrough int
	backing             int32
}

func newHandoverFS(inner fuse.RawFileSystem, generation uint16, opens *openLog) *handoverFS {
	h := &handoverFS{
		RawFileSystem: inner,
		gen:           uint64(generation) << 48,
		opens:         opens,
		counts:        map[uint64]uint64{fuse.FUSE_ROOT_ID: 1},
		fhs:           map[uint64]uint64{},
		handles:       map[uint64]openRecord{},
		modes:         map[uint64]*ioMode{},
	}
	for fh, r := range opens.snapshot() { // the files an earlier process opened
		h.handles[fh] = r
		h.countMode(r, 1)
	}
	return h
}

func (h *handoverFS) countMode(r openRecord, d int) {
	m := h.modes[r.node]
	if m == nil {
		m = &ioMode{}
		h.modes[r.node] = m
	}
	if r.backing != 0 {
		m.passthrough += d
		m.backing = r.backing
	} else {
		m.cached += d
	}
	if m.passthrough <= 0 && m.cached <= 0 {
		delete(h.modes, r.node)
	}
}

// settleMode makes an open of node agree with the files the kernel has
// open on it, and counts it.
func (h *handoverFS) settleMode(node uint64, out *fuse.OpenOut) openRecord {
	switch m := h.modes[node]; {
	case m != nil && m.passthrough > 0:
		out.OpenFlags = out.OpenFlags&^fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_PASSTHROUGH
		out.BackingID = m.backing
	case m != nil && m.cached > 0:
		out.OpenFlags = out.OpenFlags&^fuse.FOPEN_PASSTHROUGH | fuse.FOPEN_KEEP_CACHE
		out.BackingID = 0
	}
	r := openRecord{node: node}
	if out.OpenFlags&fuse.FOPEN_PASSTHROUGH != 0 {
		r.backing = out.BackingID
	}
	h.countMode(r, 1)
	return r
}

// ensure makes node id known to the bridge.
func (h *handoverFS) ensure(cancel <-chan struct{}, hdr *fuse.InHeader) fuse.Status {
	h.mu.RLock()
	known := hdr.NodeId == fuse.FUSE_ROOT_ID || h.counts[hdr.NodeId] > 0
	h.mu.RUnlock()
	if known {
		return fuse.OK
	}
	var out fuse.EntryOut
	in := fuse.InHeader{NodeId: hdr.NodeId, Caller: hdr.Caller}
	st := h.RawFileSystem.Lookup(cancel, &in, ".", &out)
	if st.Ok() {
		h.counted(out.NodeId)
	} else {
		klog.InfoS("A node id from the previous server could not be resolved", "nodeID", hdr.NodeId, "status", st)
	}
	return st
}

func (h *handoverFS) counted(id uint64) {
	h.mu.Lock()
	h.counts[id]++
	h.mu.Unlock()
}

// handle maps a kernel handle to the bridge's, opening the node again for
// a handle of another generation.
func (h *handoverFS) handle(cancel <-chan struct{}, hdr *fuse.InHeader, fh uint64, dir bool) (uint64, fuse.Status) {
	if fh == 0 {
		return 0, fuse.OK
	}
	h.mu.RLock()
	inner, ok := h.fhs[fh]
	h.mu.RUnlock()
	if ok {
		return inner, fuse.OK
	}
	if fh&^(1<<48-1) == h.gen {
		return 0, fuse.EBADF // ours, and released
	}
	in := fuse.OpenIn{InHeader: *hdr, Flags: syscall.O_RDONLY}
	var out fuse.OpenOut
	open := h.RawFileSystem.Open
	if dir {
		open = h.RawFileSystem.OpenDir
	}
	if st := open(cancel, &in, &out); !st.Ok() {
		klog.InfoS("A file handle from the previous server could not be opened again", "nodeID", hdr.NodeId, "status", st)
		return 0, st
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if prev, ok := h.fhs[fh]; ok { // a concurrent request opened it too
		h.releaseLocked(out.Fh, dir)
		return prev, fuse.OK
	}
	h.fhs[fh] = out.Fh
	return out.Fh, fuse.OK
}

func (h *handoverFS) releaseLocked(fh uint64, dir bool) {
	in := fuse.ReleaseIn{Fh: fh}
	if dir {
		go h.RawFileSystem.ReleaseDir(&in)
	} else {
		go h.RawFileSystem.Release(nil, &in)
	}
}

// issue gives the kernel a handle for the bridge's fh.
func (h *handoverFS) issue(out *fuse.OpenOut) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.issueLocked(out)
}

func (h *handoverFS) issueLocked(out *fuse.OpenOut) {
	h.nextFh++
	k := h.gen | h.nextFh
	h.fhs[k] = out.Fh
	out.Fh = k
}

// forgetHandle drops a kernel handle, returning the bridge's (0: none).
func (h *handoverFS) forgetHandle(fh uint64) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	inner := h.fhs[fh]
	delete(h.fhs, fh)
	return inner
}

func (h *handoverFS) Lookup(cancel <-chan struct{}, hdr *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if st := h.ensure(cancel, hdr); !st.Ok() {
		return st
	}
	st := h.RawFileSystem.Lookup(cancel, hdr, name, out)
	if st.Ok() && out.NodeId != 0 {
		h.counted(out.NodeId)
	}
	return st
}

func (h *handoverFS) Forget(nodeID, nlookup uint64) {
	h.mu.Lock()
	n := min(nlookup, h.counts[nodeID])
	if n == h.counts[nodeID] {
		delete(h.counts, nodeID)
	} else {
		h.counts[nodeID] -= n
	}
	h.mu.Unlock()
	if n > 0 {
		h.RawFileSystem.Forget(nodeID, n)
	}
}

func (h *handoverFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if st := h.ensure(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	if in.Flags_&fuse.FUSE_GETATTR_FH != 0 {
		fh, st := h.handle(cancel, &in.InHeader, in.Fh_, false)
		if !st.Ok() {
			return st
		}
		in.Fh_ = fh
	}
	return h.RawFileSystem.GetAttr(cancel, in, out)
}

func (h *handoverFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if st := h.ensure(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	st := h.RawFileSystem.Open(cancel, in, out)
	if !st.Ok() {
		return st
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.settleMode(in.NodeId, out)
	h.issueLocked(out)
	h.handles[out.Fh] = r
	if err := h.opens.opened(out.Fh, r); err != nil { // before the reply hands it out
		klog.ErrorS(err, "Could not record an open file")
	}
	return st
}

func (h *handoverFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if st := h.ensure(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	st := h.RawFileSystem.OpenDir(cancel, in, out)
	if st.Ok() {
		h.issue(out)
	}
	return st
}

func (h *handoverFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if st := h.ensure(cancel, &in.InHeader); !st.Ok() {
		return nil, st
	}
	fh, st := h.handle(cancel, &in.InHeader, in.Fh, false)
	if !st.Ok() {
		return nil, st
	}
	in.Fh = fh
	return h.RawFileSystem.Read(cancel, in, buf)
}

func (h *handoverFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if st := h.ensure(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	fh, st := h.handle(cancel, &in.InHeader, in.Fh, true)
	if !st.Ok() {
		return st
	}
	in.Fh = fh
	return h.RawFileSystem.ReadDir(cancel, in, out)
}

func (h *handoverFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fuse.ENOSYS // off (MountOptions.DisableReadDirPlus): its entries would escape counts
}

func (h *handoverFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	if st := h.ensure(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	fh, st := h.handle(cancel, &in.InHeader, in.Fh, false)
	if !st.Ok() {
		return st
	}
	in.Fh = fh
	return h.RawFileSystem.Lseek(cancel, in, out)
}

func (h *handoverFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	h.mu.Lock()
	fh, ok := h.fhs[in.Fh]
	h.mu.Unlock()
	if !ok {
		return fuse.OK // another generation's handle, not opened again: nothing to flush
	}
	in.Fh = fh
	return h.RawFileSystem.Flush(cancel, in)
}

func (h *handoverFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	h.mu.Lock()
	if r, ok := h.handles[in.Fh]; ok {
		delete(h.handles, in.Fh)
		h.countMode(r, -1)
	}
	h.mu.Unlock()
	// Recorded before the bridge may close the backing id.
	if err := h.opens.released(in.Fh); err != nil {
		klog.ErrorS(err, "Could not record a released file")
	}
	if fh := h.forgetHandle(in.Fh); fh != 0 {
		in.Fh = fh
		h.RawFileSystem.Release(cancel, in)
	}
}

func (h *handoverFS) ReleaseDir(in *fuse.ReleaseIn) {
	if fh := h.forgetHandle(in.Fh); fh != 0 {
		in.Fh = fh
		h.RawFileSystem.ReleaseDir(in)
	}
}

func (h *handoverFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status    { return fuse.OK }
func (h *handoverFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status { return fuse.OK }

func (h *handoverFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	return fuse.ENOSYS // the kernel falls back to GETATTR
}

func (h *handoverFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if st := h.ensure(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	return h.RawFileSystem.Access(cancel, in)
}

func (h *handoverFS) Readlink(cancel <-chan struct{}, hdr *fuse.InHeader) ([]byte, fuse.Status) {
	if st := h.ensure(cancel, hdr); !st.Ok() {
		return nil, st
	}
	return h.RawFileSystem.Readlink(cancel, hdr)
}

func (h *handoverFS) GetXAttr(cancel <-chan struct{}, hdr *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if st := h.ensure(cancel, hdr); !st.Ok() {
		return 0, st
	}
	return h.RawFileSystem.GetXAttr(cancel, hdr, attr, dest)
}

func (h *handoverFS) ListXAttr(cancel <-chan struct{}, hdr *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	if st := h.ensure(cancel, hdr); !st.Ok() {
		return 0, st
	}
	return h.RawFileSystem.ListXAttr(cancel, hdr, dest)
}

func (h *handoverFS) StatFs(cancel <-chan struct{}, hdr *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	if st := h.ensure(cancel, hdr); !st.Ok() {
		return st
	}
	return h.RawFileSystem.StatFs(cancel, hdr, out)
}

// Locks and ioctls are not negotiated on this read-only file system; the
// kernel answers them itself.
func (h *handoverFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	return fuse.ENOSYS
}
func (h *handoverFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status  { return fuse.ENOSYS }
func (h *handoverFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status { return fuse.ENOSYS }
func (h *handoverFS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	return fuse.ENOSYS
}
