package fusefs

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"k8s.io/klog/v2"
)

// handoverFS sits between go-fuse's server and its node bridge so that a
// process can take over a live FUSE connection from one that died. The
// kernel then holds node ids and file handles this process never handed
// out, and lookup counts it never saw; the bridge panics on all three.
//
//   - Node ids: the bridge's lookup count of every node id is mirrored in
//     counts (all LOOKUP and READDIRPLUS replies pass here). Before a
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
	// plain: a mount that is never handed over (Mount). Node ids and
	// handles are then the bridge's own: requests go straight through,
	// and only the io modes of open files are kept.
	plain bool
	// noOpen answers OPEN and FLUSH with ENOSYS: the kernel then opens
	// and closes files without asking again (Options.NoOpen).
	noOpen bool
	asked  atomic.Int64 // OPENs answered with ENOSYS

	mu     sync.RWMutex             // read-locked on the read path
	counts map[uint64]uint64        // node id → lookups the bridge holds
	fhs    map[uint64]*kernelHandle // kernel handle → what it is here
	modes  map[uint64]*ioMode       // node id → its open files' io mode
	nextFh uint64
}

// kernelHandle is a file handle the kernel holds.
type kernelHandle struct {
	inner uint64      // the bridge's handle; 0: not opened in this process yet
	open  *openRecord // a file's open and io mode (nil: a directory's)
}

// ioMode counts a node's files open in each io mode.
type ioMode struct {
	cached, passthrough int
	backing             int32
}

func newHandoverFS(inner fuse.RawFileSystem, generation uint16, opens *openLog, plain bool) *handoverFS {
	h := &handoverFS{
		RawFileSystem: inner,
		gen:           uint64(generation) << 48,
		opens:         opens,
		plain:         plain,
		counts:        map[uint64]uint64{fuse.FUSE_ROOT_ID: 1},
		fhs:           map[uint64]*kernelHandle{},
		modes:         map[uint64]*ioMode{},
	}
	for fh, r := range opens.snapshot() { // the files an earlier process opened
		h.fhs[fh] = &kernelHandle{open: &r}
		h.countModeLocked(r, 1)
	}
	return h
}

func (h *handoverFS) countModeLocked(r openRecord, d int) {
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

// cachedOpen reports whether the kernel has a file of node open in cached
// mode: a passthrough answer would be turned down (settleModeLocked), so the
// node need not register a backing file for it.
func (h *handoverFS) cachedOpen(node uint64) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	m := h.modes[node]
	return m != nil && m.cached > 0
}

// settleModeLocked makes an open of node agree with the files the kernel has
// open on it, and counts it.
func (h *handoverFS) settleModeLocked(node uint64, out *fuse.OpenOut) openRecord {
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
	h.countModeLocked(r, 1)
	return r
}

// prepare readies a request on node hdr.NodeId, with kernel handle *fh (0:
// none), for the bridge: an id the bridge does not know is looked up as
// "." first, and *fh becomes the bridge's handle, opened again if another
// process handed it out.
func (h *handoverFS) prepare(cancel <-chan struct{}, hdr *fuse.InHeader, fh *uint64, dir bool) fuse.Status {
	if h.plain {
		return fuse.OK
	}
	h.mu.RLock()
	known := hdr.NodeId == fuse.FUSE_ROOT_ID || h.counts[hdr.NodeId] > 0
	var inner uint64
	if kh := h.fhs[*fh]; kh != nil {
		inner = kh.inner
	}
	h.mu.RUnlock()
	if !known {
		var out fuse.EntryOut
		in := fuse.InHeader{NodeId: hdr.NodeId, Caller: hdr.Caller}
		st := h.RawFileSystem.Lookup(cancel, &in, ".", &out)
		if !st.Ok() {
			klog.InfoS("A node id from the previous server could not be resolved", "nodeID", hdr.NodeId, "status", st)
			return st
		}
		h.counted(out.NodeId)
	}
	if *fh == 0 || inner != 0 {
		*fh = inner
		return fuse.OK
	}
	inner, st := h.reopen(cancel, hdr, *fh, dir)
	*fh = inner
	return st
}

// ensure makes node id known to the bridge.
func (h *handoverFS) ensure(cancel <-chan struct{}, hdr *fuse.InHeader) fuse.Status {
	var none uint64
	return h.prepare(cancel, hdr, &none, false)
}

func (h *handoverFS) counted(id uint64) {
	h.mu.Lock()
	h.counts[id]++
	h.mu.Unlock()
}

// reopen opens the node again for a kernel handle another process handed
// out.
func (h *handoverFS) reopen(cancel <-chan struct{}, hdr *fuse.InHeader, fh uint64, dir bool) (uint64, fuse.Status) {
	if fh&^(1<<48-1) == h.gen {
		return 0, fuse.EBADF // ours, and released
	}
	in := fuse.OpenIn{InHeader: *hdr, Flags: syscall.O_RDONLY}
	var out fuse.OpenOut
	open, release := h.RawFileSystem.Open, func(in *fuse.ReleaseIn) { h.RawFileSystem.Release(nil, in) }
	if dir {
		open, release = h.RawFileSystem.OpenDir, h.RawFileSystem.ReleaseDir
	}
	if st := open(cancel, &in, &out); !st.Ok() {
		klog.InfoS("A file handle from the previous server could not be opened again", "nodeID", hdr.NodeId, "status", st)
		return 0, st
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	kh := h.fhs[fh]
	if kh == nil {
		kh = &kernelHandle{}
		h.fhs[fh] = kh
	}
	if kh.inner != 0 { // a concurrent request opened it too
		go release(&fuse.ReleaseIn{Fh: out.Fh})
		return kh.inner, fuse.OK
	}
	kh.inner = out.Fh
	return out.Fh, fuse.OK
}

// issueLocked gives the kernel a handle for the bridge's out.Fh (the
// bridge's own on a plain mount).
func (h *handoverFS) issueLocked(out *fuse.OpenOut, open *openRecord) {
	if h.plain {
		h.fhs[out.Fh] = &kernelHandle{inner: out.Fh, open: open}
		return
	}
	h.nextFh++
	k := h.gen | h.nextFh
	h.fhs[k] = &kernelHandle{inner: out.Fh, open: open}
	out.Fh = k
}

// dropHandle forgets a kernel handle and returns what it was (nil: unknown).
func (h *handoverFS) dropHandle(fh uint64) *kernelHandle {
	h.mu.Lock()
	defer h.mu.Unlock()
	kh := h.fhs[fh]
	delete(h.fhs, fh)
	if kh != nil && kh.open != nil {
		h.countModeLocked(*kh.open, -1)
	}
	return kh
}

func (h *handoverFS) Lookup(cancel <-chan struct{}, hdr *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if h.plain {
		return h.RawFileSystem.Lookup(cancel, hdr, name, out)
	}
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
	if h.plain {
		h.RawFileSystem.Forget(nodeID, nlookup)
		return
	}
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
	fh := &in.Fh_
	if in.Flags_&fuse.FUSE_GETATTR_FH == 0 {
		fh = new(uint64)
	}
	if st := h.prepare(cancel, &in.InHeader, fh, false); !st.Ok() {
		return st
	}
	return h.RawFileSystem.GetAttr(cancel, in, out)
}

func (h *handoverFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if h.noOpen {
		h.asked.Add(1)
		return fuse.ENOSYS
	}
	if st := h.ensure(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	st := h.RawFileSystem.Open(cancel, in, out)
	if !st.Ok() {
		return st
	}
	h.mu.Lock()
	r := h.settleModeLocked(in.NodeId, out)
	h.issueLocked(out, &r)
	h.mu.Unlock()
	// Recorded before the reply hands the handle out; the file write is
	// kept out of h.mu, which the read path takes.
	if err := h.opens.opened(out.Fh, r); err != nil {
		klog.ErrorS(err, "Could not record an open file")
	}
	return st
}

func (h *handoverFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if h.plain {
		return h.RawFileSystem.OpenDir(cancel, in, out)
	}
	if st := h.ensure(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	st := h.RawFileSystem.OpenDir(cancel, in, out)
	if st.Ok() {
		h.mu.Lock()
		h.issueLocked(out, nil)
		h.mu.Unlock()
	}
	return st
}

func (h *handoverFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if h.plain {
		return h.RawFileSystem.Read(cancel, in, buf)
	}
	if st := h.prepare(cancel, &in.InHeader, &in.Fh, false); !st.Ok() {
		return nil, st
	}
	return h.RawFileSystem.Read(cancel, in, buf)
}

func (h *handoverFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if st := h.prepare(cancel, &in.InHeader, &in.Fh, true); !st.Ok() {
		return st
	}
	return h.RawFileSystem.ReadDir(cancel, in, out)
}

// ReadDirPlus counts the node id of every entry of the reply, a lookup the
// kernel holds like a LOOKUP's; the bridge recorded each one's path in the
// inode log.
func (h *handoverFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if h.plain {
		return h.RawFileSystem.ReadDirPlus(cancel, in, out)
	}
	if st := h.prepare(cancel, &in.InHeader, &in.Fh, true); !st.Ok() {
		return st
	}
	st := h.RawFileSystem.ReadDirPlus(cancel, in, out)
	if st.Ok() {
		h.mu.Lock()
		eachDirentplusNode(out.Bytes(), func(id uint64) { h.counts[id]++ })
		h.mu.Unlock()
	}
	return st
}

// eachDirentplusNode calls fn with the node id of every entry of a
// READDIRPLUS reply that has one: fuse_direntplus records, each a
// fuse_entry_out (the node id first), a fuse_dirent (ino, off, namelen,
// type) and the name padded to 8 bytes. "." and ".." and failed lookups
// carry node id 0.
func eachDirentplusNode(b []byte, fn func(id uint64)) {
	entrySize := int(unsafe.Sizeof(fuse.EntryOut{}))
	const direntSize = 24
	for len(b) >= entrySize+direntSize {
		nameLen := int(binary.NativeEndian.Uint32(b[entrySize+16:]))
		n := entrySize + direntSize + (nameLen+7)&^7
		if n > len(b) {
			return
		}
		if id := binary.NativeEndian.Uint64(b); id != 0 {
			fn(id)
		}
		b = b[n:]
	}
}

func (h *handoverFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	if st := h.prepare(cancel, &in.InHeader, &in.Fh, false); !st.Ok() {
		return st
	}
	return h.RawFileSystem.Lseek(cancel, in, out)
}

func (h *handoverFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	if h.noOpen {
		return fuse.ENOSYS
	}
	if h.plain {
		return h.RawFileSystem.Flush(cancel, in)
	}
	h.mu.RLock()
	kh := h.fhs[in.Fh]
	h.mu.RUnlock()
	if kh == nil || kh.inner == 0 {
		return fuse.OK // another process's handle, not opened again: nothing to flush
	}
	in.Fh = kh.inner
	return h.RawFileSystem.Flush(cancel, in)
}

func (h *handoverFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	kh := h.dropHandle(in.Fh)
	// Recorded before the bridge may close the backing id.
	if err := h.opens.released(in.Fh); err != nil {
		klog.ErrorS(err, "Could not record a released file")
	}
	if kh != nil && kh.inner != 0 {
		in.Fh = kh.inner
		h.RawFileSystem.Release(cancel, in)
	}
}

func (h *handoverFS) ReleaseDir(in *fuse.ReleaseIn) {
	if h.plain {
		h.RawFileSystem.ReleaseDir(in)
		return
	}
	if kh := h.dropHandle(in.Fh); kh != nil && kh.inner != 0 {
		in.Fh = kh.inner
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
