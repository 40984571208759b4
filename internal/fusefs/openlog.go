package fusefs

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/sluice-dev/sluice/internal/atomicfile"
)

// openRecord is a file the kernel has open: its node and, for a file
// opened in passthrough mode, the backing id (0: cached mode).
type openRecord struct {
	node    uint64
	backing int32
}

// openLog records, in an append-only file, every file handle given to the
// kernel and its release ("o <fh> <node> <backing>", "r <fh>"). A process
// that takes a connection over learns from it which inodes the kernel has
// open in which io mode, and with which backing file: the kernel refuses
// (EIO) an open whose mode or backing file differs from the inode's open
// files'. A record is written before the reply that hands the handle out,
// and a release is recorded before its backing id is closed, so the file
// never names a closed backing id as live. It is compacted to the live
// handles as it grows.
type openLog struct {
	mu      sync.Mutex
	path    string
	f       *os.File
	live    map[uint64]openRecord
	written int // records in the file
}

func openOpenLog(path string) (*openLog, error) {
	l := &openLog{path: path, live: map[uint64]openRecord{}}
	if f, err := os.Open(path); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			l.apply(sc.Text())
		}
		f.Close()
	}
	if err := l.compactLocked(); err != nil {
		return nil, err
	}
	return l, nil
}

// apply replays one record; a torn or unknown line is skipped.
func (l *openLog) apply(line string) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return
	}
	fh, err := strconv.ParseUint(f[1], 10, 64)
	switch {
	case err != nil:
	case f[0] == "r" && len(f) == 2:
		delete(l.live, fh)
	case f[0] == "o" && len(f) == 4:
		node, err1 := strconv.ParseUint(f[2], 10, 64)
		backing, err2 := strconv.ParseInt(f[3], 10, 32)
		if err1 == nil && err2 == nil {
			l.live[fh] = openRecord{node: node, backing: int32(backing)}
		}
	}
}

// compactLocked rewrites the file with the live handles only.
func (l *openLog) compactLocked() error {
	var b strings.Builder
	for fh, r := range l.live {
		fmt.Fprintf(&b, "o %d %d %d\n", fh, r.node, r.backing)
	}
	if err := atomicfile.WriteFile(l.path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.written = f, len(l.live)
	return nil
}

func (l *openLog) appendLocked(rec string) error {
	if _, err := l.f.WriteString(rec); err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	l.written++
	if l.written > 4096 && l.written > 4*len(l.live) {
		return l.compactLocked()
	}
	return nil
}

// opened records a handle given to the kernel.
func (l *openLog) opened(fh uint64, r openRecord) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.live[fh] = r
	return l.appendLocked(fmt.Sprintf("o %d %d %d\n", fh, r.node, r.backing))
}

// released records a handle's release.
func (l *openLog) released(fh uint64) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.live[fh]; !ok {
		return nil
	}
	delete(l.live, fh)
	return l.appendLocked(fmt.Sprintf("r %d\n", fh))
}

// snapshot returns the live handles.
func (l *openLog) snapshot() map[uint64]openRecord {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[uint64]openRecord, len(l.live))
	for k, v := range l.live {
		out[k] = v
	}
	return out
}

func (l *openLog) close() error {
	if l == nil || l.f == nil {
		return nil
	}
	return l.f.Close()
}
