package fusefs

import (
	"context"
	"path"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sluice-dev/sluice/internal/listcache"
)

// dirHandle answers READDIR from a directory's listing as it arrives
// (listcache.Entries): the first entries of a large directory go to the
// reader while the origin lists the rest, and no copy of the listing is
// made for it. A READDIR waits for its first entry only; the rest of its
// reply is what has arrived, so a reply never waits for a page while it
// holds entries. Offsets are entry positions plus one, as go-fuse's own
// list streams have them.
type dirHandle struct {
	dir string

	mu  sync.Mutex
	r   *listcache.Entries
	pos int             // entries handed out
	req context.Context // the READDIR the last entry went to
}

var (
	_ = (fs.NodeOpendirHandler)((*dirNode)(nil))
	_ = (fs.FileReaddirenter)((*dirHandle)(nil))
	_ = (fs.FileSeekdirer)((*dirHandle)(nil))
	_ = (fs.FileReleasedirer)((*dirHandle)(nil))
)

func (d *dirNode) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	h := &dirHandle{dir: d.path, r: d.fsys.ns.Entries(d.path)}
	// The first page comes now, so that a directory the origin cannot list
	// fails its open.
	if _, _, err := h.r.Peek(ctx); err != nil {
		return nil, 0, errno(err)
	}
	return h, 0, 0
}

// Readdirent returns the next entry, or nil at the end of the listing or
// when the READDIR ctx belongs to has an entry and the next one has not
// arrived. go-fuse gives every READDIR a context of its own.
func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ctx == h.req && !h.r.Ready() {
		return nil, 0
	}
	e, ok, err := h.r.Next(ctx)
	if err != nil {
		return nil, errno(err)
	}
	if !ok {
		return nil, 0
	}
	h.pos++
	h.req = ctx
	de := &fuse.DirEntry{Name: e.Name, Mode: syscall.S_IFREG, Ino: ino(path.Join(h.dir, e.Name), e.Version), Off: uint64(h.pos)}
	if e.IsDir {
		de.Mode, de.Ino = syscall.S_IFDIR, ino(path.Join(h.dir, e.Name), "")
	}
	return de, 0
}

// Seekdir moves to offset off (the position after entry off-1).
func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.r.Seek(int(off))
	h.pos, h.req = int(off), nil
	return 0
}

func (h *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {}
