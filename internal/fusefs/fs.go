// Package fusefs is sluice's read-only FUSE file system: a thin front over
// a listcache.Cache (listings, TTL-cached) and a blockcache.Cache (bytes).
// It holds no data of its own, like rclone's VFS over its vfscache.
//
// Caching:
//   - Entry and attribute timeouts equal the metadata TTL, so the kernel
//     asks again once the listing it came from may be stale.
//   - A file's inode number is derived from its path and object version.
//     A changed object therefore surfaces as a new inode after the TTL, with
//     an empty page cache, while an unchanged one keeps its inode, so every
//     open returns FOPEN_KEEP_CACHE and second reads come from the kernel's
//     page cache. Opens also return FOPEN_NOFLUSH: a close sends no FLUSH.
//   - With Options.NoOpen the kernel neither opens nor closes files
//     through this process: reads come without a handle and are answered
//     by the node (fileNode.Read), and every file uses the page cache.
//   - An object whose every block is on the local disk tier is opened with
//     kernel FUSE passthrough (kernel >= 6.9, CAP_SYS_ADMIN): reads go to the
//     cache file without entering this process. Without passthrough, reads
//     are 1 MiB requests (MaxWrite), splice is off, and the mount's
//     read_ahead_kb is raised so sequential readers keep requests in flight.
//
// A connection that outlives its serving process (handover.go: MountFD,
// ServeFD, Handover) is served through handoverFS (handoverfs.go), with
// the records a successor needs in the handover directory: the INIT the
// kernel sent (initrecord), the path of every node id handed out (inode
// log, inodes.go) and every open file's io mode (open log, openlog.go).
//
// Lock order: handoverFS.mu, openLog.mu and inodeLog.mu are leaves — none
// is held while another is taken, nor across a call into go-fuse's bridge,
// the caches or the source. A method whose name ends in Locked is called
// with handoverFS.mu held.
package fusefs

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/source"
)

// Options configure a mount.
type Options struct {
	// Passthrough enables kernel FUSE passthrough for fully cached files.
	Passthrough bool
	// PageCache keeps the bytes of files sluice answers itself in the
	// kernel's page cache (FOPEN_KEEP_CACHE) instead of reading them with
	// direct I/O (nodes.go).
	PageCache bool
	// NoOpen tunes the mount for datasets of many small files: OPEN and
	// FLUSH are answered with ENOSYS, so the kernel opens and closes files
	// without a request to this process (FUSE's no_open): a warm small
	// file is read from the page cache with no round trip at all. Every
	// file is then read through the kernel's page cache (FOPEN_KEEP_CACHE),
	// without passthrough or direct I/O, which large files pay for on
	// their first read.
	NoOpen bool
	// ReadAheadKB is written to the mount's bdi read_ahead_kb (0: 1024).
	ReadAheadKB int
	// FsName is the "source" column of /proc/mounts.
	FsName string
	// AllowOther lets users other than the mounting one read the mount.
	AllowOther bool
	// Debug logs every FUSE request.
	Debug bool
}

// FS is the file system: the listing cache for names, the block cache for bytes.
type FS struct {
	ns     *listcache.Cache
	cache  *blockcache.Cache
	opts   Options
	inodes *inodeLog   // nil unless served for a keeper (ServeFD)
	front  *handoverFS // set by rawFS: it knows the io mode of open files
	walks  dirWalks    // readers going through directories in order (walk.go)
}

// New returns a file system over ns and cache.
func New(ns *listcache.Cache, cache *blockcache.Cache, opts Options) *FS {
	if opts.ReadAheadKB == 0 {
		opts.ReadAheadKB = 1024
	}
	return &FS{ns: ns, cache: cache, opts: opts}
}

// Mount is a serving mount.
type Mount struct {
	Dir    string
	server *fuse.Server
	// byFD: served on a descriptor a keeper mounted (ServeFD); go-fuse
	// does not know Dir, so unmounting is done here.
	byFD    bool
	closers []func() error
}

// mountOptions are go-fuse's options for a file system with Options o,
// served for a keeper (handover) or not; MountFD gives the kernel the same
// ones when a keeper mounts for a serving process. READDIRPLUS is on for
// both: handoverFS counts the node ids its replies hand out.
func mountOptions(o Options) fuse.MountOptions {
	mo := fuse.MountOptions{
		FsName:        o.FsName,
		Name:          contract.FSName,
		MaxWrite:      1 << 20,
		DisableSplice: true,
		AllowOther:    o.AllowOther,
		Debug:         o.Debug,
		MaxBackground: 64,
		// mmap of a file opened with FOPEN_DIRECT_IO (nodes.go).
		ExtraCapabilities: fuse.CAP_DIRECT_IO_ALLOW_MMAP,
	}
	if !o.Passthrough {
		mo.DisabledCapabilities |= fuse.CAP_PASSTHROUGH
	}
	return mo
}

// rawFS is the node bridge behind handoverFS, node id = inode number.
func (f *FS) rawFS(generation uint16, opens *openLog, plain bool) *handoverFS {
	ttl := f.ns.TTL()
	root := &dirNode{fsys: f}
	bridge := fs.NewNodeFS(root, &fs.Options{
		EntryTimeout:    &ttl,
		AttrTimeout:     &ttl,
		NegativeTimeout: &ttl,
		ExternalNodeID:  true,
		RootStableAttr:  &fs.StableAttr{Ino: fuse.FUSE_ROOT_ID},
	})
	f.front = newHandoverFS(bridge, generation, opens, plain)
	f.front.noOpen = f.opts.NoOpen
	return f.front
}

// Mount mounts the file system at dir and serves it in the background.
// A stale mount at dir is replaced; a live one is an error.
func (f *FS) Mount(dir string) (*Mount, error) {
	if err := mountutil.PrepareTarget(dir); err != nil {
		return nil, err
	}
	mo := mountOptions(f.opts)
	if os.Geteuid() == 0 {
		mo.DirectMountStrict = true
		mo.DirectMountFlags = mountFlags
	} else {
		mo.Options = append(mo.Options, "ro")
	}
	server, err := fuse.NewServer(f.rawFS(1, nil, true), dir, &mo)
	if err != nil {
		return nil, fmt.Errorf("mounting %s: %w", dir, err)
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, fmt.Errorf("mounting %s: %w", dir, err)
	}
	if err := mountutil.SetReadAheadKB(dir, f.opts.ReadAheadKB); err != nil {
		klog.V(2).InfoS("Could not raise read_ahead_kb", "path", dir, "err", err)
	}
	return &Mount{Dir: dir, server: server}, nil
}

// Unmount unmounts (waiting for the kernel to let go) and stops serving.
func (m *Mount) Unmount() error {
	var err error
	for i := 0; i < 20; i++ {
		if m.byFD {
			err = syscall.Unmount(m.Dir, 0)
		} else {
			err = m.server.Unmount()
		}
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	klog.InfoS("Unmount is busy; detaching lazily", "path", m.Dir, "err", err)
	return mountutil.Unmount(m.Dir)
}

// Wait blocks until the mount is unmounted (by Unmount or from outside).
func (m *Mount) Wait() { m.server.Wait() }

// ServeUntil serves until ctx is done, then unmounts, or until the mount is
// unmounted from outside (then it returns nil at once).
func (m *Mount) ServeUntil(ctx context.Context) error {
	defer func() {
		for _, c := range m.closers {
			_ = c()
		}
	}()
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	select {
	case <-done:
		klog.InfoS("Unmounted from outside", "path", m.Dir)
		return nil
	case <-ctx.Done():
	}
	if err := m.Unmount(); err != nil {
		return fmt.Errorf("unmounting %s: %w", m.Dir, err)
	}
	// A lazy detach leaves the connection up while other mounts of it
	// (binds at staging paths or targets) remain: do not wait for those.
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		klog.InfoS("Mount still referenced elsewhere after unmount; stopping anyway", "path", m.Dir)
	}
	return nil
}

// ino derives a stable inode number from a path and version.
func ino(path, version string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(path))
	h.Write([]byte{0})
	h.Write([]byte(version))
	n := h.Sum64() &^ (1 << 63) // below go-fuse's automatic numbers
	if n < 2 {
		n += 2 // 1 is the root
	}
	return n
}

// errno maps data-path errors to FUSE errnos.
func errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, source.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, source.ErrPermission):
		return syscall.EACCES
	case errors.Is(err, source.ErrVersionChanged):
		return syscall.ESTALE
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	default:
		return syscall.EIO
	}
}

func setAttr(a *fuse.Attr, e source.Entry) {
	if e.IsDir {
		a.Mode = syscall.S_IFDIR | 0o555
		a.Nlink = 2
	} else {
		a.Mode = syscall.S_IFREG | 0o444
		a.Nlink = 1
		a.Size = uint64(e.Size)
		a.Blocks = (uint64(e.Size) + 511) / 512
	}
	a.Blksize = 1 << 20
	if !e.ModTime.IsZero() {
		a.SetTimes(nil, &e.ModTime, &e.ModTime)
	}
}
