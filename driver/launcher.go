package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/driver/state"
	"github.com/sluice-dev/sluice/internal/cacheserver"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/fusefs"
	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/unixsock"
)

// procLauncher runs each session as `sluice csi serve-session` in its own
// session (setsid): no process group, terminal or pipe ties it to the
// `sluice csi` process, so a restart of that process — kill -9 included —
// leaves it serving. Its output goes to the session's log file; it reports
// readiness (or a coded error) on an inherited pipe that it closes once
// serving.
type procLauncher struct {
	binary string        // the sluice binary
	args   []string      // extra flags for serve-session (cache memory, -v)
	wait   time.Duration // how long a child may take to serve
	// tokenFile is the node's projected service-account token (audience
	// sluice.dev) that dataset sessions present to the cache workers.
	tokenFile string
	// workerTLS are the serve-session flags that verify the workers.
	workerTLS []string
	// cgroup, when set, is the cgroup (below cgroupRoot's hierarchies)
	// each child is moved into, out of the plugin's container.
	cgroup, cgroupRoot string
	// keeper holds the sessions' FUSE descriptors: this process mounts
	// and hands the descriptor to each child it starts.
	keeper *fdKeeper

	exitsOnce sync.Once
	exitCh    chan struct{} // a child this process started or adopted exited
}

// notifyOnExit signals exits when rec's child — adopted, so not ours to
// wait for — exits (a pidfd polls readable then).
func (l *procLauncher) notifyOnExit(rec *state.Session) {
	fd, err := unix.PidfdOpen(rec.Pid, 0)
	if err != nil {
		return // the tick finds it
	}
	if !l.alive(rec) { // the pid was reused before the pidfd was opened
		unix.Close(fd)
		return
	}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		l.childExited()
	}()
}

// exits tells when a child this process started or adopted exits, so
// that the watch need not wait for its tick.
func (l *procLauncher) exits() <-chan struct{} {
	l.exitsOnce.Do(func() { l.exitCh = make(chan struct{}, 1) })
	return l.exitCh
}

func (l *procLauncher) childExited() {
	l.exits()
	select {
	case l.exitCh <- struct{}{}:
	default:
	}
}

var _ launcher = (*procLauncher)(nil)

// start mounts rec's FUSE connection (unless the keeper still holds it:
// then the new child takes the live connection over) and starts a child
// serving it.
func (l *procLauncher) start(ctx context.Context, rec *state.Session, creds credentials) (err error) {
	fuseFile, gen := l.keeper.get(rec.Key), rec.Generation+1
	resume := fuseFile != nil
	if resume && rec.Pid > 0 && !waitThreadsGone(rec.Pid, 2*time.Second) {
		klog.InfoS("Threads of the dead serving process still exit; taking over anyway", "pid", rec.Pid)
	}
	if !resume {
		if fuseFile, err = mountFUSE(rec); err != nil {
			return err
		}
		gen = 1
		defer func() {
			if err != nil {
				_ = mountutil.Unmount(rec.MountDir())
				fuseFile.Close()
			}
		}()
	}
	c, err := l.spawn(rec, creds, fuseFile, l.serveArgs(rec, gen, resume))
	if err != nil {
		return err
	}
	defer c.report.close()
	if err = c.report.wait(ctx, l.wait); err == nil {
		rec.Pid, rec.Generation = c.cmd.Process.Pid, gen
		l.keeper.put(rec.Key, fuseFile)
		rec.StartTime, err = procStartTime(rec.Pid)
		return err
	}
	_ = c.cmd.Process.Kill()
	<-c.exited
	if errors.Is(err, errNoReport) {
		err = fmt.Errorf("%w: the serving process exited: %s", errUnavailable, lastLine(rec.LogFile()))
	}
	return err
}

// mountFUSE mounts a new FUSE connection at rec's mount directory and
// returns its /dev/fuse descriptor.
func mountFUSE(rec *state.Session) (*os.File, error) {
	fsName := rec.Source
	if rec.Dataset != "" {
		_, name := contract.SplitDatasetRef(rec.Dataset)
		fsName = cacheserver.WorkersID(name)
	}
	return fusefs.MountFD(rec.MountDir(), fusefs.Options{FsName: fsName, AllowOther: true})
}

// serveArgs are the arguments of the serve-session that serves rec as
// generation gen of its connection (resume: taking it over).
func (l *procLauncher) serveArgs(rec *state.Session, gen int, resume bool) []string {
	args := []string{"csi", "serve-session", "--mount-dir", rec.MountDir(),
		"--cache-dir", rec.CacheDir, "--stats-socket", rec.StatsSocket(), "--ready-fd", "3",
		"--fuse-fd", "4", "--handover-dir", rec.Dir, "--generation", strconv.Itoa(gen)}
	if resume {
		args = append(args, "--resume")
	}
	if rec.Dataset != "" {
		// The workers serve a Dataset under its name.
		_, name := contract.SplitDatasetRef(rec.Dataset)
		args = append(args, "--dataset", name, "--workers", rec.Workers, "--worker-token-file", l.tokenFile)
		args = append(args, l.workerTLS...)
	} else {
		args = append(args, "--source", rec.Source)
	}
	if rec.CacheSize != "" {
		args = append(args, "--cache-disk", rec.CacheSize)
	}
	if rec.Readahead != "" {
		args = append(args, "--readahead", rec.Readahead)
	}
	if rec.SmallFiles {
		args = append(args, "--small-files")
	}
	return append(args, l.args...)
}

// child is a serving process just started.
type child struct {
	cmd    *exec.Cmd
	report *readyPipe      // the node's end of its ready pipe
	exited <-chan struct{} // closed once it exited (and was reaped)
}

// spawn starts `sluice args` as rec's serving child in its own session,
// with creds in its environment, its output in the session's log, the
// write end of a ready pipe as descriptor 3 and fuseFile as 4.
func (l *procLauncher) spawn(rec *state.Session, creds credentials, fuseFile *os.File, args []string) (*child, error) {
	logf, err := os.OpenFile(rec.LogFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	report, w, err := newReadyPipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(l.binary, args...)
	cmd.Env = childEnv(os.Environ(), creds)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w, fuseFile}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		report.close()
		return nil, fmt.Errorf("starting the serving process: %w", err)
	}
	if l.cgroup != "" {
		if err := escapeCgroup(l.cgroupRoot, l.cgroup, cmd.Process.Pid); err != nil {
			// It serves; only a restart of the plugin's container would end it.
			klog.ErrorS(err, "Cannot move the serving process out of the plugin's cgroup", "pid", cmd.Process.Pid)
		}
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited); l.childExited() }() // reaps our own child
	return &child{cmd: cmd, report: report, exited: exited}, nil
}

// waitThreadsGone waits until no thread of pid runs any more. A killed
// process's leader is a zombie while its other threads still exit, and one
// of those may still move a request it read to the kernel's processing
// list: a successor must ask for the resend after that.
func waitThreadsGone(pid int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
		if err != nil {
			return true // reaped
		}
		if len(tasks) <= 1 {
			if _, err := procStartTime(pid); err != nil {
				return true // the leader alone, a zombie
			}
		}
	}
	return false
}

// lastLine returns the last non-empty line of a log file (the child's
// error), bounded in length.
func lastLine(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	l := lines[len(lines)-1]
	if len(l) > 512 {
		l = l[len(l)-512:]
	}
	return l
}

// childEnv is env without any AWS_ variable of this process, plus the
// volume's credentials: a volume reads with its own secrets or anonymously,
// never with the node's.
func childEnv(env []string, c credentials) []string {
	out := make([]string, 0, len(env)+4)
	for _, kv := range env {
		if !strings.HasPrefix(kv, "AWS_") {
			out = append(out, kv)
		}
	}
	out = append(out, "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_CONFIG_FILE=/dev/null")
	if !c.empty() {
		out = append(out, secretAccessKeyID+"="+c.AccessKeyID, secretSecretAccessKey+"="+c.SecretAccessKey)
	}
	return out
}

// procStartTime is the start time of pid (clock ticks since boot, field 22
// of /proc/PID/stat): with the pid it identifies a process across pid reuse.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); the start time is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func (l *procLauncher) alive(rec *state.Session) bool {
	if rec.Pid <= 0 {
		return false
	}
	st, err := procStartTime(rec.Pid)
	return err == nil && st == rec.StartTime
}

// adopt takes the FUSE descriptor back from the child and reads the
// credentials back from the child's environment
// (/proc/PID/environ, readable by root only): they stay in memory, so the
// watch can serve the session again should the child die later.
func (l *procLauncher) adopt(rec *state.Session) credentials {
	l.keeper.fetch(rec)
	l.notifyOnExit(rec)
	data, err := os.ReadFile("/proc/" + strconv.Itoa(rec.Pid) + "/environ")
	if err != nil {
		return credentials{}
	}
	var c credentials
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, secretAccessKeyID+"="); ok {
			c.AccessKeyID = v
		} else if v, ok := strings.CutPrefix(kv, secretSecretAccessKey+"="); ok {
			c.SecretAccessKey = v
		}
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return credentials{}
	}
	return c
}

func (l *procLauncher) stop(ctx context.Context, rec *state.Session) error {
	if !l.alive(rec) {
		l.keeper.drop(rec.Key)
		return nil
	}
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGTERM, 10 * time.Second}, {syscall.SIGKILL, 5 * time.Second}} {
		if err := syscall.Kill(rec.Pid, step.sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
		deadline := time.Now().Add(step.wait)
		for l.alive(rec) && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
		if !l.alive(rec) {
			l.keeper.drop(rec.Key)
			return nil
		}
		klog.InfoS("Serving process did not exit", "pid", rec.Pid, "signal", step.sig)
	}
	return fmt.Errorf("%w: serving process %d does not exit", errUnavailable, rec.Pid)
}

func (l *procLauncher) stats(ctx context.Context, rec *state.Session) (sessionStats, error) {
	var st sessionStats
	c := http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return unixsock.Dial(ctx, rec.StatsSocket())
		},
	}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://session/stats", nil)
	if err != nil {
		return st, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return st, fmt.Errorf("%w: session %s: %v", errUnavailable, rec.Key, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%w: session %s stats: %s", errUnavailable, rec.Key, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
