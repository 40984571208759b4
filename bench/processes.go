package bench

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sluice-dev/sluice/internal/mountutil"
)

// LogDirEnv names a directory where each child's whole output is kept
// (NAME-*.log), besides the last lines in memory.
const LogDirEnv = "SLUICE_BENCH_LOG_DIR"

// stopTimeout is how long a child gets to exit after SIGTERM before it is
// killed (and its mount detached).
const stopTimeout = 20 * time.Second

// child is a process the benchmark started that serves a FUSE mount
// (sluice mount, rclone mount). It runs in its own process group, so a
// Ctrl-C at the terminal reaches only the benchmark, which then stops its
// children in order; the kernel sends it SIGTERM if the benchmark dies.
type child struct {
	name       string
	mountPoint string
	cmd        *exec.Cmd
	out        *lineWatcher
	exited     chan struct{}
	waitErr    error
	stopOnce   sync.Once
	stopErr    error
	hwm        int64 // VmHWM in bytes, read by stop (0: not read)
	// metrics is the address of its /metrics endpoint ("": none).
	metrics string
}

// vmHWM is the peak resident set of a running process (VmHWM of
// /proc/PID/status), in bytes; 0 when it cannot be read.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// startChild starts bin with args and env (added to the benchmark's own);
// want, when not empty, is a substring of the output line that says the
// mount serves (see waitServing).
func startChild(name, mountPoint, bin string, args, env []string, want string) (*child, error) {
	if err := os.MkdirAll(mountPoint, 0o755); err != nil {
		return nil, err
	}
	c := &child{name: name, mountPoint: mountPoint, out: newLineWatcher(want), exited: make(chan struct{})}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Env = append(os.Environ(), env...)
	var out io.Writer = c.out
	var logFile *os.File
	if dir := os.Getenv(LogDirEnv); dir != "" {
		f, err := os.CreateTemp(dir, strings.NewReplacer("/", "_", " ", "-").Replace(name)+"-*.log")
		if err != nil {
			return nil, fmt.Errorf("keep the log of %s: %w", name, err)
		}
		logFile, out = f, io.MultiWriter(c.out, f)
	}
	c.cmd.Stdout = out
	c.cmd.Stderr = out
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		c.waitErr = c.cmd.Wait()
		if logFile != nil {
			logFile.Close()
		}
		close(c.exited)
	}()
	return c, nil
}

// waitServing waits for the line that says the mount serves.
func (c *child) waitServing(ctx context.Context, timeout time.Duration) error {
	select {
	case <-c.out.matched:
		return nil
	case <-c.exited:
		return fmt.Errorf("%s exited before serving (%v); output:\n%s", c.name, c.waitErr, c.out.tail())
	case <-time.After(timeout):
		return fmt.Errorf("%s did not serve within %v; output:\n%s", c.name, timeout, c.out.tail())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitMounted polls /proc/self/mountinfo until the mount point carries a
// file system of type fstype (for programs that print nothing once they
// serve, like rclone mount).
func (c *child) waitMounted(ctx context.Context, fstype string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if t, ok := mountType(c.mountPoint); ok && t == fstype {
			return nil
		}
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited before mounting (%v); output:\n%s", c.name, c.waitErr, c.out.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not mount %s within %v; output:\n%s", c.name, c.mountPoint, timeout, c.out.tail())
		}
	}
}

// stop ends the child: SIGTERM (both programs unmount and exit on it), then
// SIGKILL after stopTimeout; whatever is left mounted is detached. It is
// safe to call more than once; only the first call reports an unclean exit.
func (c *child) stop() (err error) {
	c.stopOnce.Do(func() {
		pid := c.cmd.Process.Pid
		c.hwm = vmHWM(pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(stopTimeout):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-c.exited
			c.stopErr = fmt.Errorf("%s (pid %d) did not exit within %v of SIGTERM; killed", c.name, pid, stopTimeout)
		}
		if _, mounted := mountType(c.mountPoint); mounted {
			if err := mountutil.Unmount(c.mountPoint); err != nil && c.stopErr == nil {
				c.stopErr = fmt.Errorf("%s left %s mounted: %w", c.name, c.mountPoint, err)
			}
		}
		if c.stopErr == nil && !cleanExit(c.waitErr) {
			c.stopErr = fmt.Errorf("%s exited uncleanly: %v; output:\n%s", c.name, c.waitErr, c.out.tail())
		}
		err = c.stopErr
	})
	return err
}

// cleanExit reports whether a child stopped by SIGTERM exited as it
// should: with status 0 (sluice) or 143, 128+SIGTERM (rclone).
func cleanExit(waitErr error) bool {
	if waitErr == nil {
		return true
	}
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) || !ee.Exited() {
		return false
	}
	return ee.ExitCode() == 128+int(syscall.SIGTERM)
}

// mountType returns the file system type of the mount at dir, from
// /proc/self/mountinfo (which, unlike a stat, never waits on a FUSE server).
func mountType(dir string) (string, bool) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	found, fstype := false, ""
	for _, line := range strings.Split(string(data), "\n") {
		// id parent major:minor root mountpoint options [optional...] - fstype source super
		fields := strings.Fields(line)
		if len(fields) < 5 || fields[4] != dir {
			continue
		}
		found, fstype = true, ""
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) {
				fstype = fields[i+1]
				break
			}
		}
	}
	return fstype, found // the last (topmost) mount at dir
}

// lineWatcher collects a child's output (the last tailSize bytes) and
// closes matched at the first line containing want.
type lineWatcher struct {
	mu      sync.Mutex
	want    string
	partial []byte
	buf     []byte
	matched chan struct{}
	done    bool
}

const tailSize = 16 << 10

func newLineWatcher(want string) *lineWatcher {
	return &lineWatcher{want: want, matched: make(chan struct{})}
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if len(w.buf) > 2*tailSize {
		w.buf = append(w.buf[:0], w.buf[len(w.buf)-tailSize:]...)
	}
	if w.done || w.want == "" {
		return len(p), nil
	}
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		if strings.Contains(string(w.partial[:i]), w.want) {
			w.done = true
			close(w.matched)
			w.partial = nil
			break
		}
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

func (w *lineWatcher) tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.buf
	if len(b) > tailSize {
		b = b[len(b)-tailSize:]
	}
	return string(b)
}

// cleanups is a stack of undo functions, run last-in first-out on every
// exit path of a run.
type cleanups struct {
	mu  sync.Mutex
	fns []func() error
}

func (c *cleanups) add(fn func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fns = append(c.fns, fn)
}

func (c *cleanups) run() error {
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	var errs []error
	for i := len(fns) - 1; i >= 0; i-- {
		errs = append(errs, fns[i]())
	}
	return errors.Join(errs...)
}

// peakRSS is the largest resident set of a stopped child, in bytes: its
// VmHWM just before stop, else getrusage's ru_maxrss (which also counts
// the benchmark's own resident set, as a forked child's before its exec
// is kept there); 0 before it exits.
func (c *child) peakRSS() int64 {
	if c.hwm > 0 {
		return c.hwm
	}
	select {
	case <-c.exited:
		if ru, ok := c.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			return ru.Maxrss << 10 // KiB on Linux
		}
	default:
	}
	return 0
}

// cpuSeconds is the user and system CPU time of a child that has exited.
func (c *child) cpuSeconds() float64 {
	select {
	case <-c.exited:
		ps := c.cmd.ProcessState
		return (ps.UserTime() + ps.SystemTime()).Seconds()
	default:
		return 0
	}
}

// settle waits, up to limit, until a running child has stopped working
// on what came before: its CPU time grows by less than a clock tick over a
// quarter second. A warm pass then measures the warm path, not the tail
// of the cold one (disk-tier writes, prefetches) sharing the cores.
func (c *child) settle(ctx context.Context, limit time.Duration) {
	end := time.Now().Add(limit)
	last, err := c.cpuNow()
	for err == nil && time.Now().Before(end) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
		var now float64
		if now, err = c.cpuNow(); err == nil && now-last < 0.01 {
			return
		}
		last = now
	}
}

// settleMachine waits, up to limit, until this machine's CPUs are idle:
// less than a tenth of them busy over a quarter second (/proc/stat). The
// kernel's writeback and other processes' tails of a cold pass would
// otherwise share the cores with a warm pass.
func settleMachine(ctx context.Context, limit time.Duration) {
	end := time.Now().Add(limit)
	busy0, total0, err := cpuTicks()
	for err == nil && time.Now().Before(end) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
		var busy, total uint64
		if busy, total, err = cpuTicks(); err == nil && total > total0 && float64(busy-busy0) < 0.1*float64(total-total0) {
			return
		}
		busy0, total0 = busy, total
	}
}

// cpuTicks is the machine's busy and total CPU time from /proc/stat, in
// clock ticks (iowait counts as idle).
func cpuTicks() (busy, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %q: %w", v, err)
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}

// versionOf runs bin with args and returns the first line of its output,
// followed by the main module and version recorded in the binary when it
// was built by go install (which is how the Makefile installs its tools).
func versionOf(ctx context.Context, bin string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	line = strings.Join(strings.Fields(line), " ")
	if err != nil && line == "" {
		line = "unknown (" + err.Error() + ")"
	}
	if info, err := buildinfo.ReadFile(bin); err == nil && info.Main.Path != "" {
		line += fmt.Sprintf(" (%s %s, %s)", info.Main.Path, info.Main.Version, info.GoVersion)
	}
	return line
}

// moduleVersion is the version of module path linked into this program.
func moduleVersion(path string) string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, d := range info.Deps {
			if d.Path == path {
				return d.Version
			}
		}
	}
	return "unknown"
}
