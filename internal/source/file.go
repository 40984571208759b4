package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"k8s.io/klog/v2"
)

// fileSource serves a local (or NFS) directory tree. Symbolic links are
// followed; entries that are neither regular files nor directories (after
// following links), dangling links and entries that vanish while a directory
// is listed are left out. Files are opened per ReadAt.
type fileSource struct {
	root string // absolute and clean
	id   string
}

var _ Source = (*fileSource)(nil)

func newFile(root string) (*fileSource, error) {
	if err := statDir(root); err != nil {
		return nil, err
	}
	s := &fileSource{root: root, id: "file://" + filepath.ToSlash(root)}
	klog.InfoS("Opened file source", "id", s.id)
	return s, nil
}

func (s *fileSource) ID() string { return s.id }

// fileVersion is the Version of a file: size and modification time.
func fileVersion(fi fs.FileInfo) string {
	return fmt.Sprintf("%x-%x", fi.Size(), fi.ModTime().UnixNano())
}

// full maps a checked dataset path to a file system path.
func (s *fileSource) full(p string) string {
	if p == "" {
		return s.root
	}
	return filepath.Join(s.root, filepath.FromSlash(p))
}

func (s *fileSource) List(ctx context.Context, dir string) ([]Entry, error) {
	if err := checkPath(dir); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	full := s.full(dir)
	des, err := os.ReadDir(full) // sorted by name
	if err != nil {
		return nil, s.wrap("list", dir, err)
	}
	out := make([]Entry, 0, len(des))
	for _, de := range des {
		if !ValidName(de.Name()) {
			continue
		}
		fi, err := os.Stat(filepath.Join(full, de.Name())) // follows symlinks
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				klog.V(2).InfoS("Skipping file that cannot be stat'ed", "source", s.id,
					"dir", dir, "name", de.Name(), "err", err)
			}
			continue
		}
		if e, ok := fileEntry(de.Name(), fi); ok {
			out = append(out, e)
		}
	}
	return out, nil
}

// fileEntry converts fi; ok is false for special files.
func fileEntry(name string, fi fs.FileInfo) (Entry, bool) {
	switch {
	case fi.IsDir():
		return Entry{Name: name, IsDir: true, ModTime: fi.ModTime()}, true
	case fi.Mode().IsRegular():
		return Entry{Name: name, Size: fi.Size(), ModTime: fi.ModTime(), Version: fileVersion(fi)}, true
	}
	return Entry{}, false
}

func (s *fileSource) Stat(ctx context.Context, p string) (Entry, error) {
	if err := checkPath(p); err != nil {
		return Entry{}, err
	}
	if err := ctx.Err(); err != nil {
		return Entry{}, err
	}
	fi, err := os.Stat(s.full(p))
	if err != nil {
		return Entry{}, s.wrap("stat", p, err)
	}
	e, ok := fileEntry(baseName(p), fi)
	if !ok {
		return Entry{}, fmt.Errorf("file stat %s: not a regular file or directory: %w", s.full(p), ErrNotFound)
	}
	return e, nil
}

// ReadAt checks the version on the open file before and after reading, so
// bytes of a file that changed meanwhile are never returned as the old
// version's.
func (s *fileSource) ReadAt(ctx context.Context, p, version string, buf []byte, off int64) error {
	if err := checkPath(p); err != nil {
		return err
	}
	if p == "" || off < 0 {
		return fmt.Errorf("%w: read %q at offset %d", ErrInvalid, p, off)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	full := s.full(p)
	f, err := os.Open(full)
	if err != nil {
		return s.wrap("read", p, err)
	}
	defer f.Close()
	check := func() (fs.FileInfo, error) {
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("file read %s: %w", full, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: file read %s: not a regular file", ErrInvalid, full)
		}
		if version != "" && fileVersion(fi) != version {
			return nil, fmt.Errorf("file read %s: version is now %s, was %s: %w",
				full, fileVersion(fi), version, ErrVersionChanged)
		}
		return fi, nil
	}
	fi, err := check()
	if err != nil {
		return err
	}
	if len(buf) == 0 {
		return nil
	}
	if end := off + int64(len(buf)); end > fi.Size() {
		return fmt.Errorf("file read %s [%d, %d): file has %d bytes: %w", full, off, end, fi.Size(), ErrOutOfRange)
	}
	n, err := f.ReadAt(buf, off)
	if _, cerr := check(); cerr != nil {
		return cerr
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			// The file shrank between the checks without changing size
			// and mtime as seen by the second one; report as changed.
			return fmt.Errorf("file read %s: ended after %d of %d bytes: %w", full, n, len(buf), ErrVersionChanged)
		}
		return fmt.Errorf("file read %s at %d: %w", full, off, err)
	}
	return nil
}

// wrap classifies file system errors with the sentinel errors.
func (s *fileSource) wrap(op, p string, err error) error {
	full := s.full(p)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("file %s %s: %w", op, full, ErrNotFound)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("file %s %s: %w", op, full, ErrPermission)
	}
	return fmt.Errorf("file %s %s: %w", op, full, err)
}
