package fusefs

import (
	"context"
	"path"
	"sort"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// Directory walks: readers that open a directory's files in listing order
// (a training loader going through shards, images, clips) get the next
// files' first blocks fetched ahead, so a walk of small files is not one
// origin round trip per file. An open within walkWindow files after the
// furthest one opened so far continues the walk (parallel readers open
// files slightly out of order); walkStreak such opens start the prefetch,
// which stays walkAhead files ahead. Any other open ends the streak. An
// open of a file this mount already answered whole (a second epoch) goes
// on with the walk but prefetches nothing: the next files are most likely
// cached too, and the check would cost a warm open more than the rest of
// it. The first open of a file that is not catches the prefetch up.
//
// Lock order: dirWalks.mu is a leaf.
const (
	walkWindow = 8
	walkStreak = 2
	walkAhead  = 16
	maxWalks   = 4096 // directories tracked; past it, all are forgotten
)

type dirWalks struct {
	mu   sync.Mutex
	dirs map[string]*dirWalk
	// kept holds the opens of directories whose listing was in
	// progress when they were opened (replayWhenListed).
	kept map[string][]deferredOpen
}

type dirWalk struct {
	last   int // furthest index opened
	streak int
	ahead  int // furthest index prefetched
}

// opened records an open of entry i of dir and returns the entries to
// prefetch, [from, to] (ok false: none; always none when warm).
func (w *dirWalks) opened(dir string, i int, warm bool) (from, to int, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dirs == nil || len(w.dirs) >= maxWalks {
		w.dirs = map[string]*dirWalk{}
	}
	d := w.dirs[dir]
	if d == nil {
		w.dirs[dir] = &dirWalk{last: i, ahead: i}
		return 0, 0, false
	}
	switch {
	case i > d.last && i <= d.last+walkWindow:
		d.streak++
		d.last = i
	case i <= d.last && i > d.last-walkWindow:
		// A parallel reader behind the furthest: the walk goes on.
	default:
		d.streak, d.last, d.ahead = 0, i, i
	}
	if d.streak < walkStreak || warm {
		return 0, 0, false
	}
	from, to = max(d.last+1, d.ahead+1), d.last+walkAhead
	if from > to {
		return 0, 0, false
	}
	d.ahead = to
	return from, to, true
}

// prefetchNext notes the open of the file at p (warm: answered whole by
// this mount before) and fetches the first block of the next files of its
// directory when a walk is under way.
func (fsys *FS) prefetchNext(ctx context.Context, p string, warm bool) {
	dir, name := path.Split(p)
	dir = path.Clean("/" + dir)[1:]
	// An open while its directory is still being listed (a large one,
	// in pages) is kept and gone through once the listing is at hand.
	entries, ok := fsys.ns.Listed(dir)
	if !ok {
		if first := fsys.walks.keep(dir, name, warm); first {
			go fsys.replayWhenListed(dir)
		}
		return
	}
	fsys.walkOpen(dir, name, warm, entries)
}

// walkOpen is prefetchNext with dir's listing at hand.
func (fsys *FS) walkOpen(dir, name string, warm bool, entries []source.Entry) {
	i := sort.Search(len(entries), func(i int) bool { return entries[i].Name >= name })
	if i == len(entries) || entries[i].Name != name {
		return
	}
	from, to, ok := fsys.walks.opened(dir, i, warm)
	if !ok || from >= len(entries) {
		return
	}
	for _, e := range entries[from:min(to+1, len(entries))] {
		if e.IsDir || e.Size == 0 {
			continue
		}
		obj := blockcache.ObjectRef{Source: fsys.ns.Source().ID(), Path: path.Join(dir, e.Name), Version: e.Version, Size: e.Size}
		fsys.cache.Prefetch(obj, 0, 0)
	}
}

// nextFile returns the object of the file after p in its directory's
// listing (the cached one: the lookup of p listed it), skipping
// directories and empty files; ok is false at the end or when the
// listing is not at hand.
func (fsys *FS) nextFile(ctx context.Context, p string) (blockcache.ObjectRef, bool) {
	dir, name := path.Split(p)
	dir = path.Clean("/" + dir)[1:]
	entries, ok := fsys.ns.Listed(dir)
	if !ok {
		return blockcache.ObjectRef{}, false
	}
	i := sort.Search(len(entries), func(i int) bool { return entries[i].Name > name })
	for ; i < len(entries); i++ {
		if e := entries[i]; !e.IsDir && e.Size > 0 {
			return blockcache.ObjectRef{Source: fsys.ns.Source().ID(), Path: path.Join(dir, e.Name), Version: e.Version, Size: e.Size}, true
		}
	}
	return blockcache.ObjectRef{}, false
}

// deferredOpen is an open noted while its directory was still being
// listed.
type deferredOpen struct {
	name string
	warm bool
}

const (
	// maxDeferred bounds the opens kept per directory while it is
	// listed; the walk needs only the last few.
	maxDeferred = 64
	// deferredListWait bounds the wait for a listing in progress.
	deferredListWait = 30 * time.Second
)

// keep notes the open of name in dir, whose listing is in progress, for
// the walk, and reports whether it is the first one kept for dir.
func (w *dirWalks) keep(dir, name string, warm bool) (first bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.kept == nil {
		w.kept = map[string][]deferredOpen{}
	}
	q, waiting := w.kept[dir]
	if len(q) == maxDeferred {
		q = q[1:]
	}
	w.kept[dir] = append(q, deferredOpen{name, warm})
	return !waiting
}

// takeKept returns and forgets the opens kept for dir, in order.
func (w *dirWalks) takeKept(dir string) []deferredOpen {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.kept[dir]
	delete(w.kept, dir)
	return q
}

// replayWhenListed waits (off the opens' path) for dir's listing in
// progress and then goes through the opens kept meanwhile.
func (fsys *FS) replayWhenListed(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), deferredListWait)
	entries, err := fsys.ns.List(ctx, dir)
	cancel()
	q := fsys.walks.takeKept(dir)
	if err != nil {
		return
	}
	for _, o := range q {
		fsys.walkOpen(dir, o.name, o.warm, entries)
	}
}
