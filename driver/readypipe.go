package driver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// readyPipe is the pipe on which a serving child reports to the node
// process that started it, in one line: "ready" once it serves, or
// "error CODE MESSAGE" when it fails before (CODE the gRPC code number of
// the error, MESSAGE its text on one line). The node keeps the read end
// (newReadyPipe) and reads the report with wait; the child inherits the
// write end (--ready-fd, inheritedReadyPipe) and reports with ready or
// fail.
type readyPipe struct {
	f *os.File // nil once closed
}

// errNoReport says that the pipe closed (the child exited) without a
// report, or that the child wrote something else.
var errNoReport = errors.New("the serving process exited without reporting")

// newReadyPipe returns the node's end of a new pipe and the child's end,
// for cmd.ExtraFiles; the node closes the child's end once the child has
// started.
func newReadyPipe() (*readyPipe, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	return &readyPipe{f: r}, w, nil
}

// inheritedReadyPipe is the child's end of the pipe, its descriptor fd
// (nil for fd 0: nobody waits for a report, and reporting does nothing).
func inheritedReadyPipe(fd int) *readyPipe {
	if fd <= 0 {
		return nil
	}
	return &readyPipe{f: os.NewFile(uintptr(fd), "ready")}
}

// ready reports that the child serves, and closes the pipe.
func (p *readyPipe) ready() { p.report("ready") }

// fail reports err with its gRPC code, and closes the pipe. Once the pipe
// is closed (after ready) fail does nothing; fail(nil) only closes it.
func (p *readyPipe) fail(err error) {
	if err == nil {
		p.close()
		return
	}
	p.report(fmt.Sprintf("error %d %s", codeOf(err), oneLine(err.Error())))
}

func (p *readyPipe) report(line string) {
	if p == nil || p.f == nil {
		return
	}
	fmt.Fprintln(p.f, line)
	p.close()
}

// close closes the pipe; closing it again does nothing.
func (p *readyPipe) close() {
	if p == nil || p.f == nil {
		return
	}
	p.f.Close()
	p.f = nil
}

// wait reads the child's report within d (or by ctx's deadline, if that
// comes first): nil for "ready"; the reported error, with its code, for
// "error CODE MESSAGE"; errNoReport if the pipe closed without either or
// held something else; an error wrapping context.DeadlineExceeded if no
// line came in time.
func (p *readyPipe) wait(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := p.f.SetReadDeadline(deadline); err != nil {
		return err
	}
	line, err := bufio.NewReader(p.f).ReadString('\n')
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("the serving process did not serve within %s: %w", d, context.DeadlineExceeded)
	case errors.Is(err, io.EOF) && line == "":
		return errNoReport
	case err != nil && line == "":
		return err
	}
	return parseReport(strings.TrimSpace(line))
}

// parseReport turns a report line into wait's result.
func parseReport(line string) error {
	if line == "ready" {
		return nil
	}
	if rest, ok := strings.CutPrefix(line, "error "); ok {
		if code, msg, ok := strings.Cut(rest, " "); ok {
			n, _ := strconv.ParseUint(code, 10, 32)
			return errorForCode(n, msg)
		}
	}
	return errNoReport
}

// oneLine replaces the line breaks in s with spaces.
func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\n' || c == '\r' {
			b[i] = ' '
		}
	}
	return string(b)
}
