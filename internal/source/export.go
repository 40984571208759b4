package source

// CheckPath validates a dataset path received from outside (a cache-worker
// request): "" or slash-separated names without empty, "." or ".."
// elements, without a leading slash and without NUL bytes. The error wraps
// ErrInvalid.
func CheckPath(p string) error { return checkPath(p) }
