package testutil

import "math/rand/v2"

// RandBytes returns n pseudo-random bytes, the same for the same seed.
func RandBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
