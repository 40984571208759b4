package driver

import (
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/driver/state"
	"github.com/sluice-dev/sluice/internal/fusefs"
)

// fdKeeper holds each session's /dev/fuse descriptor (see "Surviving
// restarts" in doc.go): while it is held, the kernel keeps the connection,
// and every bind of it, across the death of the serving child, and queues
// the readers' requests for the child that takes over.
//
// The keeper must never hold a file open on one of its mounts: starting a
// child closes the child's copies of such files at exec, each close is a
// FLUSH, and with the server dead that FLUSH would block the start of the
// very child that answers it.
type fdKeeper struct {
	mu  sync.Mutex
	fds map[string]*os.File // session key → descriptor
}

var _ connKeeper = (*fdKeeper)(nil)

// holds reports whether key's connection is kept and still up.
func (k *fdKeeper) holds(key string) bool { return k.get(key) != nil }

// get returns key's descriptor if its connection is still up; one whose
// connection ended (unmounted, aborted) is closed and forgotten.
func (k *fdKeeper) get(key string) *os.File {
	k.mu.Lock()
	defer k.mu.Unlock()
	f := k.fds[key]
	if f == nil {
		return nil
	}
	if !connectionUp(f) {
		klog.InfoS("FUSE connection ended; descriptor released", "session", key)
		f.Close()
		delete(k.fds, key)
		return nil
	}
	return f
}

func (k *fdKeeper) put(key string, f *os.File) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fds == nil {
		k.fds = map[string]*os.File{}
	}
	if old := k.fds[key]; old != nil && old != f {
		old.Close()
	}
	k.fds[key] = f
}

// drop closes key's descriptor. With no serving child left, that ends the
// connection: its mounts then fail fast (ENOTCONN) instead of waiting.
func (k *fdKeeper) drop(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if f := k.fds[key]; f != nil {
		f.Close()
		delete(k.fds, key)
	}
}

// fetch takes the descriptor back from rec's live child (after this
// process restarted).
func (k *fdKeeper) fetch(rec *state.Session) {
	f, err := fusefs.FetchFD(rec.Handover().HandbackSocket, 2*time.Second)
	if err != nil {
		klog.ErrorS(err, "Could not take the FUSE descriptor back from the serving process; a crash of it will remount",
			"session", rec.Key, "pid", rec.Pid)
		return
	}
	k.put(rec.Key, f)
}

// connectionUp: poll on /dev/fuse reports POLLERR once the connection is
// gone, POLLIN while requests wait.
func connectionUp(f *os.File) bool {
	fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && (n == 0 || fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) == 0)
}
