package driver

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestReadyPipe(t *testing.T) {
	// raw writes a line as a child might, then closes the pipe.
	raw := func(line string) func(*readyPipe) {
		return func(p *readyPipe) {
			fmt.Fprint(p.f, line)
			p.close()
		}
	}
	tests := []struct {
		name  string
		child func(p *readyPipe) // nil: writes nothing, keeps the pipe open
		ctxD  time.Duration      // the reader's context deadline (0: none)
		// wantErr is errNoReport or context.DeadlineExceeded (errors.Is);
		// else wait's error has wantCode and message wantMsg (OK: nil).
		wantErr  error
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "ready", child: (*readyPipe).ready, wantCode: codes.OK},
		{name: "error with its code", child: func(p *readyPipe) { p.fail(fmt.Errorf("%w: --source: bad", errInvalid)) },
			wantCode: codes.InvalidArgument, wantMsg: "invalid argument: --source: bad"},
		{name: "a status keeps its code", child: func(p *readyPipe) { p.fail(status.Error(codes.PermissionDenied, "denied")) },
			wantCode: codes.PermissionDenied, wantMsg: "rpc error: code = PermissionDenied desc = denied"},
		{name: "message on one line", child: func(p *readyPipe) { p.fail(errors.New("first\nsecond\r\nthird")) },
			wantCode: codes.Internal, wantMsg: "first second  third"},
		{name: "fail after ready reports nothing more", child: func(p *readyPipe) { p.ready(); p.fail(errUnavailable) },
			wantCode: codes.OK},
		{name: "fail(nil) closes without a report", child: func(p *readyPipe) { p.fail(nil) }, wantErr: errNoReport},
		{name: "closed without a report", child: (*readyPipe).close, wantErr: errNoReport},
		{name: "a line without its newline", child: raw("error 5 no such bucket"),
			wantCode: codes.NotFound, wantMsg: "no such bucket"},
		{name: "unknown code", child: raw("error 99 what\n"), wantCode: codes.Internal, wantMsg: "what"},
		{name: "code zero", child: raw("error 0 zero\n"), wantCode: codes.Internal, wantMsg: "zero"},
		{name: "error without a message", child: raw("error 7\n"), wantErr: errNoReport},
		{name: "something else", child: raw("hello\n"), wantErr: errNoReport},
		{name: "silent past the wait", wantErr: context.DeadlineExceeded},
		{name: "silent past the context's deadline", ctxD: 50 * time.Millisecond, wantErr: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := newReadyPipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.close()
			defer w.Close()
			wait := 200 * time.Millisecond
			ctx := context.Background()
			if tc.ctxD > 0 {
				wait = time.Minute
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctxD)
				defer cancel()
			}
			child := &readyPipe{f: w}
			if tc.child != nil {
				go tc.child(child)
			}
			start := time.Now()
			err = r.wait(ctx, wait)
			if time.Since(start) > 10*time.Second {
				t.Errorf("wait took %s", time.Since(start))
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("wait = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if status.Code(err) != tc.wantCode {
				t.Fatalf("wait = %v (code %v), want code %v", err, status.Code(err), tc.wantCode)
			}
			if err != nil && err.Error() != tc.wantMsg {
				t.Errorf("message %q, want %q", err.Error(), tc.wantMsg)
			}
		})
	}
}

func TestInheritedReadyPipe(t *testing.T) {
	// No descriptor: nobody waits, and reporting does nothing.
	p := inheritedReadyPipe(0)
	if p != nil {
		t.Fatalf("inheritedReadyPipe(0) = %v, want nil", p)
	}
	p.ready()
	p.fail(errInvalid)
	p.close()

	r, w, err := newReadyPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	fd, err := syscall.Dup(int(w.Fd())) // as a child inherits it
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	inheritedReadyPipe(fd).ready()
	if err := r.wait(context.Background(), 5*time.Second); err != nil {
		t.Errorf("wait = %v, want ready", err)
	}
}
