package fusefs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
)

// The test binary doubles as the serving process of TestHandover*: with
// SLUICE_FUSEFS_SERVE set it serves inherited fd 3 until killed.
func TestMain(m *testing.M) {
	if cfg := os.Getenv("SLUICE_FUSEFS_SERVE"); cfg != "" {
		if err := serveForTest(cfg); err != nil {
			os.Stderr.WriteString("serve: " + err.Error() + "\n")
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

// slowGetter delays each origin block, so reads are in flight when the
// serving process is killed; p.bin's blocks (a file read whole before the
// kill) come at once.
type slowGetter struct {
	inner blockcache.Getter
	delay time.Duration
}

func (g slowGetter) GetBlock(ctx context.Context, b blockcache.BlockRef, p []byte) error {
	if path.Base(b.Object.Path) != "p.bin" {
		time.Sleep(g.delay)
	}
	return g.inner.GetBlock(ctx, b, p)
}

// serveForTest: cfg is "srcDir|mountDir|stateDir|generation|resume".
func serveForTest(cfg string) error {
	f := strings.Split(cfg, "|")
	src, err := source.Parse("file://"+f[0], source.Options{})
	if err != nil {
		return err
	}
	gen, _ := strconv.Atoi(f[3])
	if f[4] == "resume" { // started beforehand: wait for the go
		os.Stdout.WriteString("waiting\n")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			return err
		}
	}
	cache, err := blockcache.New(blockcache.Config{BlockSize: 64 << 10, MemoryBytes: 8 << 20,
		DiskDir: filepath.Join(f[2], "cache"), DiskBytes: 64 << 20,
		Getter: slowGetter{blockcache.OriginGetter{Source: src}, 300 * time.Millisecond}})
	if err != nil {
		return err
	}
	fsys := New(listcache.New(src, 200*time.Millisecond), cache, Options{FsName: "test", AllowOther: true, Passthrough: true})
	_, err = fsys.ServeFD(f[1], Handover{FD: os.NewFile(3, "fuse"), Generation: uint16(gen), Resume: f[4] == "resume",
		InitFile: filepath.Join(f[2], "init"), InodeLog: filepath.Join(f[2], "inodes"), OpenLog: filepath.Join(f[2], "opens"),
		HandbackSocket: filepath.Join(f[2], "fd.sock")})
	if err != nil {
		return err
	}
	os.Stdout.WriteString("ready\n")
	select {}
}

type servingProc struct {
	cmd     *exec.Cmd
	gen     int
	logPath string
	stdin   io.WriteCloser
	out     *bufio.Reader
}

func (p *servingProc) log() string {
	data, _ := os.ReadFile(p.logPath)
	return string(data)
}

// startServing starts a serving process on fd. One that resumes is started
// ahead and waits for takeOver: exec'ing a process closes its copies of the
// parent's open files on the mount, and each close is a FLUSH that only a
// live server answers.
func startServing(t *testing.T, fd *os.File, srcDir, mnt, state string, gen int, resume bool) *servingProc {
	t.Helper()
	mode := "fresh"
	if resume {
		mode = "resume"
	}
	p := &servingProc{cmd: exec.Command(os.Args[0]), gen: gen}
	p.cmd.Env = append(os.Environ(), "SLUICE_FUSEFS_SERVE="+strings.Join([]string{srcDir, mnt, state, strconv.Itoa(gen), mode}, "|"))
	p.cmd.ExtraFiles = []*os.File{fd}
	logf, err := os.Create(filepath.Join(state, "serve-"+strconv.Itoa(gen)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd.Stderr = logf
	p.logPath = logf.Name()
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.out = bufio.NewReader(out)
	if resume {
		p.expect(t, "waiting")
	} else {
		p.expect(t, "ready")
	}
	return p
}

func (p *servingProc) expect(t *testing.T, want string) {
	t.Helper()
	if line, _ := p.out.ReadString('\n'); line != want+"\n" {
		_ = p.cmd.Wait()
		t.Fatalf("serving process (generation %d) did not say %q: %s", p.gen, want, p.log())
	}
}

// takeOver lets a waiting process take the connection over.
func (p *servingProc) takeOver(t *testing.T) {
	t.Helper()
	if _, err := p.stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	p.expect(t, "ready")
}

func (p *servingProc) kill() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

// TestHandoverKeepsTheMountAcrossKill: the test holds the connection's
// descriptor as the node plugin does; a SIGKILLed serving process is
// replaced by one that takes the connection over. A read in flight at the
// kill, an open file, an open directory and cached names all keep working,
// with no ENOTCONN and no remount.
func TestHandoverKeepsTheMountAcrossKill(t *testing.T) {
	testutil.RequireRootFUSE(t)
	srcDir, state := t.TempDir(), t.TempDir()
	mnt := filepath.Join(t.TempDir(), "mnt")
	a, b := testutil.RandBytes(16<<16, 7), testutil.RandBytes(3<<16+11, 8)
	pt := testutil.RandBytes(directIOMin+3<<16, 9) // read with direct I/O first, so its next open is passthrough
	r := testutil.RandBytes(5000, 10)
	for p, data := range map[string][]byte{"dir/a.bin": a, "dir/b.bin": b, "dir/p.bin": pt, "dir/sub/c": []byte("c"), "listed/r.bin": r} {
		mustWriteFile(t, filepath.Join(srcDir, p), data)
	}
	fd, err := MountFD(mnt, Options{FsName: "test", AllowOther: true})
	if err != nil {
		t.Fatal(err)
	}
	var procs []*servingProc
	keepers := []*os.File{fd}
	var held []*os.File // closed last: with no server, a close (FLUSH) would wait forever
	t.Cleanup(func() {
		_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		for _, p := range procs {
			p.kill()
		}
		for _, k := range keepers {
			k.Close() // the connection ends: the files below close at once
		}
		for _, f := range held {
			f.Close()
		}
	})
	procs = append(procs, startServing(t, fd, srcDir, mnt, state, 1, false))

	// Gen 1: an open file, an open directory, names the kernel caches.
	f, err := os.Open(filepath.Join(mnt, "dir", "a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	held = append(held, f)
	// No kernel readahead: the read below must be in flight, not done.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, a[:1<<16]) {
		t.Fatalf("first read: %v", err)
	}
	d, err := os.Open(filepath.Join(mnt, "dir"))
	if err != nil {
		t.Fatal(err)
	}
	held = append(held, d)
	if _, err := os.Stat(filepath.Join(mnt, "dir", "sub", "c")); err != nil {
		t.Fatal(err)
	}
	// A node id handed out by READDIRPLUS alone: r.bin is opened right
	// after its directory is listed, within the entry timeout, so the
	// kernel opens the listing's node without a LOOKUP.
	if _, err := os.ReadDir(filepath.Join(mnt, "listed")); err != nil {
		t.Fatal(err)
	}
	rf, err := os.Open(filepath.Join(mnt, "listed", "r.bin"))
	if err != nil {
		t.Fatal(err)
	}
	held = append(held, rf)
	// A fully cached file held open in passthrough mode (or in cached mode,
	// had the disk tier not kept it): the successor must open it again in
	// the same mode, with the same backing file, or the kernel says EIO.
	ptPath := filepath.Join(mnt, "dir", "p.bin")
	if got, err := os.ReadFile(ptPath); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("reading p.bin: %v", err)
	}
	// The kernel sends that read's RELEASE after close returns: an open
	// that came first would find the file still open in cached mode.
	waitLogReleased(t, filepath.Join(state, "opens"), ptPath)
	ptFile, err := os.Open(ptPath)
	if err != nil {
		t.Fatal(err)
	}
	held = append(held, ptFile)
	if openBacking(t, filepath.Join(state, "opens"), ptPath) == 0 {
		t.Fatal("p.bin is open in cached mode: the passthrough takeover would go untested")
	}

	// A read in flight when gen 1 is killed (each origin block takes 300 ms).
	var wg sync.WaitGroup
	var inflight error
	wg.Add(1)
	go func() {
		defer wg.Done()
		got := make([]byte, 2<<16)
		if _, err := f.ReadAt(got, 8<<16); err != nil {
			inflight = err
		} else if !bytes.Equal(got, a[8<<16:10<<16]) {
			inflight = errors.New("wrong bytes")
		}
	}()
	next := startServing(t, fd, srcDir, mnt, state, 2, true)
	procs = append(procs, next)
	time.Sleep(100 * time.Millisecond)
	procs[0].kill()
	time.Sleep(300 * time.Millisecond) // readers now wait on the kept connection
	before := countMounts(mnt)
	next.takeOver(t)
	wg.Wait()
	if inflight != nil {
		t.Fatalf("read in flight across the kill: %v", inflight)
	}

	// Gen 2 knows none of gen 1's node ids or handles.
	time.Sleep(300 * time.Millisecond) // past the 200 ms entry/attr timeouts
	fadviseDontNeed(f)
	if _, err := f.ReadAt(buf, 4<<16); err != nil || !bytes.Equal(buf, a[4<<16:5<<16]) {
		t.Fatalf("read on a file opened before the kill: %v", err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != int64(len(a)) {
		t.Fatalf("fstat on a file opened before the kill: %v", err)
	}
	if names, err := d.Readdirnames(-1); err != nil || len(names) != 4 {
		t.Fatalf("directory opened before the kill: %v %v", names, err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "dir", "b.bin")); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("new open after the kill: %v", err)
	}
	if got, err := os.ReadFile(ptPath); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("new open of a file held open across the kill: %v", err)
	}
	fadviseDontNeed(ptFile)
	got := make([]byte, len(pt))
	if _, err := ptFile.ReadAt(got, 0); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("read on p.bin held open across the kill: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "dir", "sub", "c")); err != nil {
		t.Fatalf("cached name after the kill: %v", err)
	}
	gotR := make([]byte, len(r))
	if _, err := rf.ReadAt(gotR, 0); err != nil || !bytes.Equal(gotR, r) {
		t.Fatalf("read on a file whose node came from READDIRPLUS before the kill: %v", err)
	}
	// The kernel forgets gen 1's nodes at gen 2: no lookup-count underflow.
	f.Close()
	d.Close()
	ptFile.Close()
	rf.Close()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0o200); err != nil {
		t.Logf("drop_caches: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "dir", "a.bin")); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("read after forgets: %v", err)
	}

	// A keeper that restarted takes the descriptor back from gen 2 and
	// hands it to gen 3 after gen 2 dies.
	fd2, err := FetchFD(filepath.Join(state, "fd.sock"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	keepers = append(keepers, fd2)
	next = startServing(t, fd2, srcDir, mnt, state, 3, true)
	procs = append(procs, next)
	procs[1].kill()
	next.takeOver(t)
	if got, err := os.ReadFile(filepath.Join(mnt, "dir", "b.bin")); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("read through generation 3: %v", err)
	}
	if after := countMounts(mnt); after != before || before != 1 {
		t.Errorf("mounts at %s: %d before the takeover, %d after; want the same one", mnt, before, after)
	}
	for i, p := range procs {
		if strings.Contains(p.log(), "panic") {
			t.Errorf("generation %d panicked:\n%s", i+1, p.log())
		}
	}
}

func mustWriteFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitLogReleased waits until the open log of a serving process has no
// file of path open (see waitReleased).
func waitLogReleased(t *testing.T, logPath, path string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		open := len(loggedOpens(t, logPath, path))
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still has %d files open 5s after its last close", path, open)
		}
	}
}

// openBacking is the backing id the serving process recorded in its open
// log for an open file at path (0: cached mode).
func openBacking(t *testing.T, logPath, path string) int32 {
	t.Helper()
	var backing int32
	for _, r := range loggedOpens(t, logPath, path) {
		backing = max(backing, r.backing)
	}
	return backing
}

// loggedOpens are the open log's live records of the file at path.
func loggedOpens(t *testing.T, logPath, path string) []openRecord {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	l := &openLog{live: map[uint64]openRecord{}}
	for _, line := range strings.Split(string(raw), "\n") {
		l.apply(line)
	}
	var out []openRecord
	for _, r := range l.live {
		if r.node == st.Sys().(*syscall.Stat_t).Ino {
			out = append(out, r)
		}
	}
	return out
}
