package fusefs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/unixsock"
)

// serveHandback hands fd (SCM_RIGHTS) to each process of this user that
// connects to the unix socket at path: a keeper that restarted takes the
// connection's descriptor back from its serving process this way.
func serveHandback(path string, fd *os.File) (func() error, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := unixsock.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("handback socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handBack(c.(*net.UnixConn), fd)
		}
	}()
	return ln.Close, nil
}

func handBack(c *net.UnixConn, fd *os.File) {
	defer c.Close()
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	var cred *unix.Ucred
	cerr := raw.Control(func(s uintptr) {
		cred, err = unix.GetsockoptUcred(int(s), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cerr != nil || err != nil || cred.Uid != uint32(os.Geteuid()) {
		klog.InfoS("Refused the FUSE descriptor to a peer", "err", errors.Join(cerr, err))
		return
	}
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.WriteMsgUnix([]byte{0}, unix.UnixRights(int(fd.Fd())), nil); err != nil {
		klog.ErrorS(err, "Could not hand the FUSE descriptor back")
	}
}

// FetchFD takes a connection's /dev/fuse descriptor from the process
// serving it (its Handover.HandbackSocket).
func FetchFD(path string, timeout time.Duration) (*os.File, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := unixsock.Dial(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("handback socket: %w", err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	_ = uc.SetReadDeadline(time.Now().Add(timeout))
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("handback: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("handback: no descriptor received (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("handback: no descriptor received (%v)", err)
	}
	return os.NewFile(uintptr(fds[0]), "/dev/fuse"), nil
}
