package fusefs

import (
	"os"

	"golang.org/x/sys/unix"
)

// pageCached reports whether at least nine tenths of f's first size bytes
// are in the page cache (cachestat(2), Linux 6.5). Where the kernel cannot
// tell, it reports true: passthrough is then taken as before.
func pageCached(f *os.File, size int64) bool {
	var st unix.Cachestat_t
	rng := unix.CachestatRange{Off: 0, Len: uint64(size)}
	if err := unix.Cachestat(uint(f.Fd()), &rng, &st, 0); err != nil {
		return true
	}
	pages := (uint64(size) + uint64(os.Getpagesize()) - 1) / uint64(os.Getpagesize())
	return st.Cache*10 >= pages*9
}
