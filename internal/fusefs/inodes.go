package fusefs

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// inodeLog remembers, in an append-only file, the path of every node the
// kernel was given. The kernel names nodes by number only (node id = inode
// number, a hash of path and version), so a process that takes over a
// live FUSE connection reads this file to find the path behind a node id
// the kernel still holds. A record is "d|f <ino> <quoted path>"; a torn
// last line (a writer killed mid-write) is skipped.
type inodeLog struct {
	mu    sync.Mutex
	f     *os.File
	known map[uint64]inodeRecord
}

type inodeRecord struct {
	dir  bool
	path string
}

// openInodeLog opens (creating) path and loads its records.
func openInodeLog(path string) (*inodeLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("inode log: %w", err)
	}
	l := &inodeLog{f: f, known: map[uint64]inodeRecord{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if ino, rec, ok := parseInodeRecord(sc.Text()); ok {
			l.known[ino] = rec
		}
	}
	return l, nil
}

func parseInodeRecord(line string) (uint64, inodeRecord, bool) {
	kind, rest, ok := strings.Cut(line, " ")
	if !ok || (kind != "d" && kind != "f") {
		return 0, inodeRecord{}, false
	}
	num, quoted, ok := strings.Cut(rest, " ")
	if !ok {
		return 0, inodeRecord{}, false
	}
	ino, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, inodeRecord{}, false
	}
	p, err := strconv.Unquote(quoted)
	if err != nil {
		return 0, inodeRecord{}, false
	}
	return ino, inodeRecord{dir: kind == "d", path: p}, true
}

// record notes ino's path once. Its errors only cost a later takeover the
// node (ESTALE), so they are returned for logging, not for failing a lookup.
func (l *inodeLog) record(ino uint64, dir bool, path string) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.known[ino]; ok {
		return nil
	}
	kind := "f"
	if dir {
		kind = "d"
	}
	if _, err := fmt.Fprintf(l.f, "%s %d %s\n", kind, ino, strconv.Quote(path)); err != nil {
		return fmt.Errorf("inode log: %w", err)
	}
	l.known[ino] = inodeRecord{dir: dir, path: path}
	return nil
}

// resolve returns the path recorded for ino.
func (l *inodeLog) resolve(ino uint64) (inodeRecord, bool) {
	if l == nil {
		return inodeRecord{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.known[ino]
	return r, ok
}

func (l *inodeLog) close() error {
	if l == nil {
		return nil
	}
	return l.f.Close()
}
