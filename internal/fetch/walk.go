package fetch

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/source"
)

// walk lists cfg.Root (a directory, recursively, or one file) into the
// files to copy, in listing order. A name that cannot be a local file
// name is skipped with one log line.
func walk(ctx context.Context, cfg Config) (plan, error) {
	root := strings.Trim(cfg.Root, "/")
	e, err := cfg.Source.Stat(ctx, root)
	if err != nil {
		if errors.Is(err, source.ErrNotFound) {
			return plan{}, fmt.Errorf("fetch %q: not in the dataset: %w", "/"+root, err)
		}
		return plan{}, fmt.Errorf("fetch %q: %w", "/"+root, err)
	}
	var p plan
	if !e.IsDir {
		name := path.Base(root)
		if root == "" || !included(cfg.Include, name) {
			return p, nil
		}
		p.items = append(p.items, item{src: root, rel: name, e: e})
		p.total = e.Size
		return p, nil
	}
	err = p.dir(ctx, cfg, root, "")
	return p, err
}

func (p *plan) dir(ctx context.Context, cfg Config, dir, rel string) error {
	entries, err := cfg.Source.List(ctx, dir)
	if err != nil {
		return fmt.Errorf("fetch %q: list: %w", "/"+dir, err)
	}
	for _, e := range entries {
		if !safeName(e.Name) {
			klog.InfoS("Skipping an object whose name cannot be a file name", "dir", "/"+dir, "name", fmt.Sprintf("%q", e.Name))
			continue
		}
		src, r := path.Join(dir, e.Name), path.Join(rel, e.Name)
		if e.IsDir {
			if err := p.dir(ctx, cfg, src, r); err != nil {
				return err
			}
			continue
		}
		if !included(cfg.Include, r) {
			continue
		}
		p.items = append(p.items, item{src: src, rel: r, e: e})
		p.total += e.Size
	}
	return nil
}

// safeName reports whether name is one path element that stays inside
// its directory (source.ValidName) and is not a partial file's name.
func safeName(name string) bool {
	return source.ValidName(name) && !strings.HasSuffix(name, partialSuffix)
}

// included reports whether rel matches one of the globs (all when none).
// "**/" in a glob matches any number of leading directories.
func included(globs []string, rel string) bool {
	if len(globs) == 0 {
		return true
	}
	for _, g := range globs {
		if match(g, rel) {
			return true
		}
	}
	return false
}

func match(glob, rel string) bool {
	before, after, deep := strings.Cut(glob, "**/")
	if !deep {
		ok, _ := path.Match(glob, rel)
		return ok
	}
	parts := strings.Split(rel, "/")
	// parts[:i] must match before (nothing when before is empty), and
	// after must match parts[j:] for some j ≥ i.
	for i := 0; i <= len(parts); i++ {
		if before == "" && i > 0 {
			break
		}
		if before != "" {
			if ok, _ := path.Match(strings.TrimSuffix(before, "/"), strings.Join(parts[:i], "/")); !ok {
				continue
			}
		}
		for j := i; j < len(parts); j++ {
			if match(after, strings.Join(parts[j:], "/")) {
				return true
			}
		}
	}
	return false
}
