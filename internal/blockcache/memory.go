package blockcache

import (
	"container/list"
	"sync"
)

// memoryTier is a byte-bounded LRU of whole blocks. Blocks are immutable
// once inserted: readers may keep a slice after eviction, it is never reused.
type memoryTier struct {
	mu    sync.Mutex
	limit int64
	used  int64
	order *list.List // front = most recently used; values are *memEntry
	items map[string]*list.Element
}

type memEntry struct {
	key  string
	data []byte
	crc  uint32 // CRC-32C of data
}

func newMemoryTier(limit int64) *memoryTier {
	return &memoryTier{limit: limit, order: list.New(), items: map[string]*list.Element{}}
}

// get returns the block and its checksum and marks it recently used.
func (m *memoryTier) get(key string) ([]byte, uint32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.items[key]
	if !ok {
		return nil, 0, false
	}
	m.order.MoveToFront(el)
	e := el.Value.(*memEntry)
	return e.data, e.crc, true
}

// contains reports presence without touching the LRU order.
func (m *memoryTier) contains(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.items[key]
	return ok
}

// put inserts a block, evicting least recently used ones to stay within the
// limit. A block larger than the whole limit is not kept. It returns the
// number of evicted blocks.
func (m *memoryTier) put(key string, data []byte, crc uint32) int {
	size := int64(len(data))
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
	for m.used+size > m.limit {
		last := m.order.Back()
		e := last.Value.(*memEntry)
		m.order.Remove(last)
		delete(m.items, e.key)
		m.used -= int64(len(e.data))
		evicted++
	}
	m.items[key] = m.order.PushFront(&memEntry{key: key, data: data, crc: crc})
	m.used += size
	return evicted
}

func (m *memoryTier) size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.used
}
