package driver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-dev/sluice/internal/source"
)

// Error kinds. Code below wraps them with %w and the reason; toStatus turns
// them into gRPC codes. This file is the one place where errors become
// codes: the RPCs' argument checks return status.Error(codes.InvalidArgument)
// directly, and every other error passes through toStatus in the server's
// interceptor. A serving child reports its error's code (codeOf) to the
// node (readypipe.go), which makes it an error again with errorForCode.
var (
	errInvalid       = errors.New("invalid argument")
	errNotFound      = errors.New("not found")
	errAlreadyExists = errors.New("already exists")
	errPrecondition  = errors.New("failed precondition")
	errUnimplemented = errors.New("not implemented")
	errPermission    = errors.New("permission denied")
	errUnavailable   = errors.New("unavailable")
)

// codeOf classifies err. Errors that already carry a gRPC status keep it.
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	switch {
	case errors.Is(err, errInvalid), errors.Is(err, source.ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, errNotFound), errors.Is(err, source.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, errAlreadyExists):
		return codes.AlreadyExists
	case errors.Is(err, errPrecondition):
		return codes.FailedPrecondition
	case errors.Is(err, errUnimplemented):
		return codes.Unimplemented
	case errors.Is(err, errPermission), errors.Is(err, source.ErrPermission):
		return codes.PermissionDenied
	case errors.Is(err, errUnavailable):
		return codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	default:
		return codes.Internal
	}
}

// toStatus maps err to a gRPC status error (nil stays nil).
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok {
		return s.Err()
	}
	return status.Error(codeOf(err), err.Error())
}

// codedError is an error that a serving child reported with its code.
// Wrapped with %w it keeps the code, and its message stays readable.
type codedError struct {
	code codes.Code
	msg  string
}

func (e *codedError) Error() string              { return e.msg }
func (e *codedError) GRPCStatus() *status.Status { return status.New(e.code, e.msg) }

// errorForCode turns an error that a serving child reported as a code
// number and message back into an error with that code.
func errorForCode(code uint64, msg string) error {
	if code == 0 || code > uint64(codes.Unauthenticated) {
		return &codedError{codes.Internal, msg}
	}
	return &codedError{codes.Code(code), msg}
}

// invalidArg is the argument check's error.
func invalidArg(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
