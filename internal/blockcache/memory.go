package blockcache

import (
	"container/list"
	"sync"
)

// memoryTier is a byte-bounded LRU of whole blocks. It holds one reference
// to each block's buffer; a reader takes its own (get), so a block evicted
// while it is read stays intact until the reader releases it. A pooled
// buffer costs its whole mapping against the limit, a heap buffer its
// length.
//
// Lock order: memoryTier.mu is taken before bufferPool.mu (an eviction
// may return a buffer to the pool), never after.
type memoryTier struct {
	mu    sync.Mutex
	limit int64
	used  int64
	order *list.List // front = most recently used; values are *memEntry
	items map[string]*list.Element
}

type memEntry struct {
	key string
	buf *buffer
	crc uint32 // CRC-32C of buf.data
}

func newMemoryTier(limit int64) *memoryTier {
	return &memoryTier{limit: limit, order: list.New(), items: map[string]*list.Element{}}
}

// get returns the block with a reference the caller releases, and its
// checksum, and marks it recently used.
func (m *memoryTier) get(key string) (*buffer, uint32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.items[key]
	if !ok {
		return nil, 0, false
	}
	m.order.MoveToFront(el)
	e := el.Value.(*memEntry)
	return e.buf.ref(), e.crc, true
}

// contains reports presence without touching the LRU order.
func (m *memoryTier) contains(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.items[key]
	return ok
}

// put inserts a block (taking its own reference), evicting least recently
// used ones to stay within the limit. A block larger than the whole limit
// is not kept. It returns the number of evicted blocks.
func (m *memoryTier) put(key string, buf *buffer, crc uint32) int {
	size := buf.cost()
	if size > m.limit {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[key]; ok {
		m.order.MoveToFront(el)
		return 0
	}
	evicted := 0
	for m.used+size > m.limit && m.evictLocked() {
		evicted++
	}
	m.items[key] = m.order.PushFront(&memEntry{key: key, buf: buf.ref(), crc: crc})
	m.used += size
	return evicted
}

// evictFree drops the least recently used block that only the tier
// holds, so that its buffer goes back to the pool at once (a block also
// held by a queued disk write or a reader would free nothing); false when
// the reclaimScan least recently used blocks are all held elsewhere.
func (m *memoryTier) evictFree() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	el := m.order.Back()
	for range reclaimScan {
		if el == nil {
			return false
		}
		if e := el.Value.(*memEntry); e.buf.pool != nil && e.buf.refs.Load() == 1 {
			m.removeLocked(el)
			return true
		}
		el = el.Prev()
	}
	return false
}

// reclaimScan bounds evictFree's walk.
const reclaimScan = 64

func (m *memoryTier) evictLocked() bool {
	last := m.order.Back()
	if last == nil {
		return false
	}
	m.removeLocked(last)
	return true
}

func (m *memoryTier) removeLocked(el *list.Element) {
	e := el.Value.(*memEntry)
	m.order.Remove(el)
	delete(m.items, e.key)
	m.used -= e.buf.cost()
	e.buf.release()
}

// clear drops every block.
func (m *memoryTier) clear() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for m.evictLocked() {
	}
}

func (m *memoryTier) size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.used
}
