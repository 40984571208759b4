package fusefs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/atomicfile"
	"github.com/sluice-dev/sluice/internal/mountutil"
)

// mountFlags: read-only, no devices, no set-id.
const mountFlags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_RDONLY

// opInit is FUSE_INIT's opcode.
const opInit = 26

// MountFD opens /dev/fuse and mounts it at dir with the options a process
// serving Options o answers INIT with (root only). This is the keeper's
// half of a mount that outlives its serving process: the caller keeps the
// descriptor for the connection's life — while any process holds it the
// kernel keeps the connection and queues requests — and hands it to the
// serving process (ServeFD), and to its successor should it die.
func MountFD(dir string, o Options) (*os.File, error) {
	if err := mountutil.PrepareTarget(dir); err != nil {
		return nil, err
	}
	fd, err := syscall.Open("/dev/fuse", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/fuse: %w", err)
	}
	f := os.NewFile(uintptr(fd), "/dev/fuse") // blocking: not in Go's poller
	mo := mountOptions(o)
	data := []string{fmt.Sprintf("fd=%d", fd), "rootmode=40000",
		fmt.Sprintf("user_id=%d", os.Geteuid()), fmt.Sprintf("group_id=%d", os.Getegid()),
		fmt.Sprintf("max_read=%d", mo.MaxWrite)}
	if mo.AllowOther {
		data = append(data, "allow_other")
	}
	src := mo.FsName
	if src == "" {
		src = mo.Name
	}
	if err := syscall.Mount(src, dir, "fuse."+mo.Name, mountFlags, strings.Join(data, ",")); err != nil {
		f.Close()
		return nil, fmt.Errorf("mounting %s: %w", dir, err)
	}
	return f, nil
}

// Handover describes a connection served on a descriptor from a keeper.
type Handover struct {
	// FD is the connection's /dev/fuse descriptor (MountFD).
	FD *os.File
	// Generation numbers this process among the connection's servers
	// (from 1); it tags the file handles it gives the kernel.
	Generation uint16
	// InitFile keeps the connection's INIT request: the first server
	// writes it, a successor replays it to its own go-fuse server.
	InitFile string
	// InodeLog records the path behind each node id given to the kernel.
	InodeLog string
	// OpenLog records the files the kernel has open and their io mode
	// (passthrough or cached), which a successor's opens must agree with.
	OpenLog string
	// Resume: another process served this connection and died. INIT is
	// replayed from InitFile and the kernel is asked (FUSE_NOTIFY_RESEND,
	// Linux >= 6.9) to queue again the requests the dead process had read
	// but not answered.
	Resume bool
	// HandbackSocket, when set, is a unix socket on which this process
	// hands the descriptor (SCM_RIGHTS) to a keeper that restarted.
	HandbackSocket string
}

// ServeFD serves the file system on h.FD, mounted at dir by a keeper.
func (f *FS) ServeFD(dir string, h Handover) (m *Mount, err error) {
	if h.FD == nil || h.Generation == 0 || h.InitFile == "" {
		return nil, errors.New("serving a descriptor needs the descriptor, a generation and an INIT file")
	}
	var closers []func() error
	defer func() {
		if err != nil {
			for _, c := range closers {
				_ = c()
			}
		}
	}()
	if h.InodeLog != "" {
		if f.inodes, err = openInodeLog(h.InodeLog); err != nil {
			return nil, err
		}
		closers = append(closers, f.inodes.close)
	}
	var opens *openLog
	if h.OpenLog != "" {
		if opens, err = openOpenLog(h.OpenLog); err != nil {
			return nil, err
		}
		closers = append(closers, opens.close)
	}
	// go-fuse owns the descriptor it serves; the handback keeps h.FD.
	fuseFD, err := unix.FcntlInt(h.FD.Fd(), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("duplicating the FUSE descriptor: %w", err)
	}
	mo := mountOptions(f.opts)
	var server *fuse.Server
	if h.Resume {
		server, err = resumeServer(f.rawFS(h.Generation, opens, false), &mo, fuseFD, h.InitFile)
	} else {
		server, err = fuse.NewServer(f.rawFS(h.Generation, opens, false), fmt.Sprintf("/dev/fd/%d", fuseFD), &mo)
		if err == nil { // else go-fuse closed fuseFD
			err = writeInit(h.InitFile, server.KernelSettings())
		}
	}
	if err != nil {
		return nil, fmt.Errorf("serving %s: %w", dir, err)
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, fmt.Errorf("serving %s: %w", dir, err)
	}
	if !h.Resume {
		if err := mountutil.SetReadAheadKB(dir, f.opts.ReadAheadKB); err != nil {
			klog.V(2).InfoS("Could not raise read_ahead_kb", "path", dir, "err", err)
		}
	}
	if h.HandbackSocket != "" {
		c, err := serveHandback(h.HandbackSocket, h.FD)
		if err != nil {
			return nil, err
		}
		closers = append(closers, c)
	}
	return &Mount{Dir: dir, server: server, byFD: true, closers: closers}, nil
}

// resumeServer starts a go-fuse server on a connection that is already
// initialized. go-fuse reads INIT first, so it is given one end of a
// socket pair carrying the recorded INIT; its reply is read and dropped
// (the kernel keeps what it negotiated with the first server, and the
// same options negotiate the same). Then the FUSE descriptor is dup'ed
// over that end — the server has not read anything else yet — and the
// kernel is asked to resend what the dead server had read.
func resumeServer(fs fuse.RawFileSystem, mo *fuse.MountOptions, fuseFD int, initFile string) (*fuse.Server, error) {
	defer unix.Close(fuseFD)
	initMsg, err := os.ReadFile(initFile)
	if err != nil {
		return nil, fmt.Errorf("the connection's INIT: %w", err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours, theirs := pair[0], pair[1]
	defer unix.Close(ours)
	if _, err := unix.Write(ours, initMsg); err != nil {
		unix.Close(theirs)
		return nil, fmt.Errorf("replaying INIT: %w", err)
	}
	server, err := fuse.NewServer(fs, fmt.Sprintf("/dev/fd/%d", theirs), mo)
	if err != nil {
		return nil, fmt.Errorf("replaying INIT: %w", err)
	}
	reply := make([]byte, 4096)
	n, err := unix.Read(ours, reply)
	var out fuse.OutHeader
	if err == nil {
		err = binary.Read(bytes.NewReader(reply[:n]), binary.NativeEndian, &out)
	}
	if err != nil || out.Status != 0 {
		return nil, fmt.Errorf("replaying INIT: status %d: %v", out.Status, err)
	}
	if err := unix.Dup3(fuseFD, theirs, unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("taking over the FUSE descriptor: %w", err)
	}
	resend := fuse.OutHeader{Length: uint32(binary.Size(fuse.OutHeader{})), Status: -fuse.NOTIFY_RESEND} // notify codes are positive on the wire
	var b bytes.Buffer
	_ = binary.Write(&b, binary.NativeEndian, &resend)
	if _, err := unix.Write(theirs, b.Bytes()); err != nil {
		// Before Linux 6.9: requests in flight at the crash stay unanswered.
		klog.ErrorS(err, "The kernel did not resend the requests in flight")
	}
	return server, nil
}

// writeInit records the connection's INIT request (header and body), as
// the kernel sent it, for a successor to replay.
func writeInit(path string, in *fuse.InitIn) error {
	msg := *in
	msg.InHeader = fuse.InHeader{Length: uint32(binary.Size(msg)), Opcode: opInit, Unique: 1}
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, &msg); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("recording INIT: %w", err)
	}
	return nil
}
