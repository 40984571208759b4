package source

import (
	"errors"
	"fmt"
)

// PartialError is a failed ReadAt that had already received and checked
// its first N bytes (the range's Content-Range and version matched). The
// retry wrapper asks only for the rest, so an attempt cut short mid-body
// (a deadline, a reset connection) costs the origin no byte twice.
type PartialError struct {
	N   int
	Err error
}

func (e *PartialError) Error() string { return fmt.Sprintf("after %d bytes: %v", e.N, e.Err) }
func (e *PartialError) Unwrap() error { return e.Err }

// partial wraps err when n > 0 bytes of a read arrived before it.
func partial(n int, err error) error {
	if n <= 0 {
		return err
	}
	return &PartialError{N: n, Err: err}
}

// received reports how many leading bytes of a failed read arrived.
func received(err error) int {
	var pe *PartialError
	if errors.As(err, &pe) {
		return pe.N
	}
	return 0
}
