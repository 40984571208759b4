// Package unixsock listens on and dials unix sockets whose paths may be
// longer than the 107 bytes a sockaddr_un holds (a kubelet root dir deep in
// a file system is enough). Such a path is reached through its directory's
// descriptor: /proc/self/fd/N/NAME, which the kernel resolves while binding
// or connecting; the socket itself is at the long path.
package unixsock

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// maxPath is the longest path a sockaddr_un holds (with its NUL).
const maxPath = len(unix.RawSockaddrUnix{}.Path) - 1

// Listen listens on the unix socket at path.
func Listen(path string) (net.Listener, error) {
	var ln net.Listener
	err := viaDir(path, func(p string) error {
		var err error
		ln, err = net.Listen("unix", p)
		return err
	})
	if err != nil {
		return nil, err
	}
	if ul, ok := ln.(*net.UnixListener); ok && len(path) > maxPath {
		// The listener's address is the /proc path, which Close would
		// unlink in vain: it removes the long path instead.
		ul.SetUnlinkOnClose(false)
		return &longListener{UnixListener: ul, path: path}, nil
	}
	return ln, nil
}

// longListener removes its socket's long path on Close, as a listener on
// a short one does.
type longListener struct {
	*net.UnixListener
	path string
}

func (l *longListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !os.IsNotExist(rerr) && err == nil {
		err = rerr
	}
	return err
}

// Dial connects to the unix socket at path.
func Dial(ctx context.Context, path string) (net.Conn, error) {
	var c net.Conn
	err := viaDir(path, func(p string) error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, "unix", p)
		return err
	})
	return c, err
}

// viaDir calls fn with path itself, or, when it is too long, with a path
// through a descriptor of its directory held open for the call.
func viaDir(path string, fn func(string) error) error {
	if len(path) <= maxPath {
		return fn(path)
	}
	dir, err := os.OpenFile(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	defer dir.Close()
	short := "/proc/self/fd/" + strconv.Itoa(int(dir.Fd())) + "/" + filepath.Base(path)
	if len(short) > maxPath {
		return fmt.Errorf("unix socket %s: its name is longer than %d bytes", path, maxPath)
	}
	if err := fn(short); err != nil {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	return nil
}
