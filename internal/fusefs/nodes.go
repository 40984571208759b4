package fusefs

import (
	"context"
	"io"
	"os"
	"path"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// dirNode is a directory of the dataset.
type dirNode struct {
	fs.Inode
	fsys *FS
	path string // "" for the root
}

var (
	_ = (fs.NodeLookuper)((*dirNode)(nil))
	_ = (fs.NodeGetattrer)((*dirNode)(nil))
	_ = (fs.NodeLookupNoder)((*dirNode)(nil))
)

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	e, err := d.fsys.ns.Lookup(ctx, d.path, name)
	if err != nil {
		return nil, errno(err)
	}
	return d.newChild(ctx, path.Join(d.path, name), e, out), 0
}

// newChild makes the node of entry e at p, recording its path in the
// inode log for a process that may take the connection over.
func (d *dirNode) newChild(ctx context.Context, p string, e source.Entry, out *fuse.EntryOut) *fs.Inode {
	setAttr(&out.Attr, e)
	var ops fs.InodeEmbedder = &fileNode{fsys: d.fsys, path: p, entry: e}
	attr := fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino(p, e.Version)}
	if e.IsDir {
		ops, attr = &dirNode{fsys: d.fsys, path: p}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino(p, "")}
	}
	if err := d.fsys.inodes.record(attr.Ino, e.IsDir, p); err != nil {
		klog.ErrorS(err, "Could not record a node's path", "path", p)
	}
	return d.NewInode(ctx, ops, attr)
}

// LookupNode (called on the root) finds a node by its id alone, for a
// process that took over a connection whose kernel holds ids handed out
// by the one before: the inode log gives the path, the namespace the
// entry. An object changed since is stale.
func (d *dirNode) LookupNode(ctx context.Context, id uint64, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	rec, ok := d.fsys.inodes.resolve(id)
	if !ok {
		return nil, syscall.ESTALE
	}
	parent, name := path.Split(rec.path)
	e, err := d.fsys.ns.Lookup(ctx, strings.TrimSuffix(parent, "/"), name)
	if err != nil {
		return nil, errno(err)
	}
	if e.IsDir != rec.dir {
		return nil, syscall.ESTALE
	}
	n := d.newChild(ctx, rec.path, e, out)
	if n.StableAttr().Ino != id {
		return nil, syscall.ESTALE
	}
	return n, 0
}

func (d *dirNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setAttr(&out.Attr, source.Entry{IsDir: true})
	return 0
}

// fileNode is one version of one object; a new version is a new node.
type fileNode struct {
	fs.Inode
	fsys  *FS
	path  string
	entry source.Entry
	// served counts the bytes this process answered for the node itself,
	// for Open's choice of passthrough, direct I/O or the page cache.
	served atomic.Int64
	// shared answers reads that come without a handle (Options.NoOpen).
	shared atomic.Pointer[handle]
}

var (
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeGetattrer)((*fileNode)(nil))
	_ = (fs.NodeReader)((*fileNode)(nil))
)

// Read answers a read on the handle Open made, or, for a kernel that opens
// files without asking (Options.NoOpen), on the node's shared handle. Its
// first read counts as the open for directory walks.
func (f *fileNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h, ok := fh.(*handle); ok {
		return h.Read(ctx, dest, off)
	}
	h := f.shared.Load()
	if h == nil {
		if f.shared.CompareAndSwap(nil, f.newHandle()) {
			f.fsys.prefetchNext(ctx, f.path, false)
		}
		h = f.shared.Load()
	}
	return h.Read(ctx, dest, off)
}

// newHandle is a handle reading the node through the block cache, whose
// readahead goes on into the next file of the directory (shards, parts,
// images read in order).
func (f *fileNode) newHandle() *handle {
	obj := blockcache.ObjectRef{Source: f.fsys.ns.Source().ID(), Path: f.path, Version: f.entry.Version, Size: f.entry.Size}
	h := &handle{r: f.fsys.cache.NewReader(obj), served: &f.served}
	fsys, p := f.fsys, f.path
	h.r.SetNext(func() (blockcache.ObjectRef, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), nextFileTimeout)
		defer cancel()
		return fsys.nextFile(ctx, p)
	})
	return h
}

func (f *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setAttr(&out.Attr, f.entry)
	return 0
}

func (f *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	h := f.newHandle()
	obj := h.r.Object()
	// A small file this mount has answered whole is in the kernel's page
	// cache of this inode (FOPEN_KEEP_CACHE below): its open needs no disk
	// file and no passthrough registration, the cost of a warm open. Should
	// the kernel have dropped the pages, it reads them from the block cache.
	servedSmall := f.entry.Size < directIOMin && f.served.Load() >= f.entry.Size
	if f.fsys.opts.Passthrough && !servedSmall && !f.fsys.front.cachedOpen(f.StableAttr().Ino) {
		h.file, h.release, _ = f.fsys.cache.OpenLocal(obj)
		if h.file != nil && !f.fsys.opts.PageCache && f.served.Load() < f.entry.Size && !mostlyCached(h.file, f.entry.Size) {
			// The disk tier's copy is whole but not in the page cache
			// (it was written with O_DIRECT): passthrough would have the
			// kernel fill page-cache pages from the disk while the
			// reader waits. The first read is answered here instead
			// (O_DIRECT from the disk into pooled buffers, direct I/O
			// to the reader); once the file is read again, passthrough
			// lets the page cache keep it.
			h.release()
			h.file, h.release = nil, nil
		}
	}
	f.fsys.prefetchNext(ctx, f.path, servedSmall)
	// NOFLUSH: a read-only file has nothing to flush, and a close without
	// a FLUSH round trip is a third of a small file's requests.
	if h.file != nil || f.fsys.opts.PageCache || f.entry.Size < directIOMin || f.served.Load() >= f.entry.Size {
		return h, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	// The first read of a file that sluice answers itself is direct I/O
	// (files of at least directIOMin; a smaller one is one READ request
	// through the page cache, which also knows where it ends):
	// the bytes go from the cached block straight into the reader's
	// buffer, and the kernel fills no page cache of its own for them.
	// Filling fresh page-cache pages costs more than the rest of a cold
	// read on VMs that hand free memory back to their host. Once the file
	// was read whole, the next opens let the kernel's page cache keep it
	// (passthrough when the disk copy is whole, else FOPEN_KEEP_CACHE).
	// Sequential readers are read ahead by the block cache, not by the
	// kernel.
	return h, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
}

// mostlyCached reports whether nine tenths of f's first size bytes are in
// the page cache; where the kernel cannot tell, true (passthrough then).
func mostlyCached(f *os.File, size int64) bool {
	share, ok := blockcache.PageCached(f, 0, size)
	return !ok || share >= 0.9
}

// nextFileTimeout bounds the listing lookup of the file after an open one
// (it is cached: the lookup of the open file listed its directory).
const nextFileTimeout = 5 * time.Second

// directIOMin is the smallest file read with direct I/O: the largest FUSE
// request (MaxWrite). A smaller file read through the page cache takes one
// READ, and its end is known there; with direct I/O a reader's next read
// would be a second round trip to learn it is at the end.
const directIOMin = 1 << 20

// handle is an open file. When file is set, the kernel reads it directly
// (passthrough) and Read is not called.
type handle struct {
	r       *blockcache.Reader
	file    *os.File
	release func()
	served  *atomic.Int64 // the node's
}

var (
	_ = (fs.FileReader)((*handle)(nil))
	_ = (fs.FileReleaser)((*handle)(nil))
	_ = (fs.FilePassthroughFder)((*handle)(nil))
)

// Read answers with the cached blocks themselves (leaseResult): go-fuse
// writes them to the kernel with writev and releases them after.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	l, err := h.r.Read(ctx, dest, off)
	if err != nil && err != io.EOF {
		if l != nil {
			l.Release()
		}
		e := errno(err)
		if ctx.Err() == nil || e != syscall.EINTR {
			// The reader gets EIO (or the errno of a definite answer); the
			// cause is here. An interrupted read that ends with EINTR is the
			// reader's choice (a signal); one that ends otherwise is logged.
			klog.ErrorS(err, "Read failed", "path", h.r.Object().Path, "offset", off, "size", len(dest), "interrupted", ctx.Err() != nil)
		}
		return nil, e
	}
	if l == nil { // at or past the end
		return fuse.ReadResultData(nil), 0
	}
	h.served.Add(int64(l.Len()))
	return leaseResult{l}, 0
}

// leaseResult is a fuse.ReadResult over a blockcache.Lease. It has
// go-fuse's Slices method, so the reply is written from the slices
// without a copy; Done runs once the reply is written.
type leaseResult struct{ l *blockcache.Lease }

func (r leaseResult) Size() int                       { return r.l.Len() }
func (r leaseResult) Slices() ([][]byte, fuse.Status) { return r.l.Slices(), fuse.OK }
func (r leaseResult) Done()                           { r.l.Release() }
func (r leaseResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	if cap(buf) < r.l.Len() {
		buf = make([]byte, r.l.Len())
	}
	buf = buf[:r.l.Len()]
	r.l.CopyTo(buf)
	return buf, fuse.OK
}

func (h *handle) PassthroughFd() (int, bool) {
	if h.file == nil {
		return 0, false
	}
	return int(h.file.Fd()), true
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	if h.release != nil {
		h.release()
	}
	return 0
}
