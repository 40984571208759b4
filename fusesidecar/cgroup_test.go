package fusesidecar_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// memoryCgroup is a memory cgroup of the test's own, on cgroup v2 or v1.
type memoryCgroup struct {
	dir string
	v2  bool
}

// newMemoryCgroup makes a cgroup limited to limit bytes (no swap).
func newMemoryCgroup(t *testing.T, limit int64) *memoryCgroup {
	t.Helper()
	name := fmt.Sprintf("sluice-test-%d", os.Getpid())
	cg := &memoryCgroup{}
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); err == nil && strings.Contains(string(b), "memory") {
		cg.dir, cg.v2 = filepath.Join("/sys/fs/cgroup", name), true
	} else if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err == nil {
		cg.dir = filepath.Join("/sys/fs/cgroup/memory", name)
	} else {
		if os.Getenv("CI") != "" {
			t.Fatal("no writable memory cgroup (v2 with the memory controller, or v1's memory hierarchy); CI must run this test")
		}
		t.Skip("needs a memory cgroup (v2 with the memory controller, or v1's memory hierarchy)")
	}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cg.dir) })
	files := map[string]string{"memory.limit_in_bytes": strconv.FormatInt(limit, 10)}
	if cg.v2 {
		files = map[string]string{"memory.max": strconv.FormatInt(limit, 10), "memory.swap.max": "0"}
	}
	for f, v := range files {
		if err := os.WriteFile(filepath.Join(cg.dir, f), []byte(v), 0o644); err != nil && !os.IsNotExist(err) {
			t.Fatalf("%s: %v", f, err)
		}
	}
	return cg
}

func (cg *memoryCgroup) add(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(cg.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ooms is how many processes the cgroup's OOM killer killed; peak is its
// largest memory use.
func (cg *memoryCgroup) ooms(t *testing.T) (kills, peak int64) {
	t.Helper()
	events, peakFile := "memory.oom_control", "memory.max_usage_in_bytes"
	if cg.v2 {
		events, peakFile = "memory.events", "memory.peak"
	}
	b, err := os.ReadFile(filepath.Join(cg.dir, events))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "oom_kill" {
			kills, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	if b, err := os.ReadFile(filepath.Join(cg.dir, peakFile)); err == nil {
		peak, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	return kills, peak
}

// TestSidecarKeepsWithinItsMemoryLimit runs the sidecar in a memory cgroup
// of 200Mi with the webhook's default memory tier (256Mi, more than the
// limit) and 4 readers reading 384Mi at once: the sidecar shrinks its
// caches to fit the limit it is told ($SLUICE_MEMORY_LIMIT, the downward
// API), every byte reads right, and the OOM killer never fires.
func TestSidecarKeepsWithinItsMemoryLimit(t *testing.T) {
	testutil.RequireRootFUSE(t)
	bin := testutil.SluiceBin(t)
	const limit = 200 << 20
	cg := newMemoryCgroup(t, limit)
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	sums := map[string][32]byte{}
	for i := range 3 {
		b := testutil.RandBytes(128<<20, uint64(i))
		name := fmt.Sprintf("part-%d.bin", i)
		sums[name] = sha256.Sum256(b)
		srv.Put(t, "data", name, b)
	}
	mnt, staging := filepath.Join(t.TempDir(), "data"), t.TempDir()
	vol, _ := json.Marshal(contract.SidecarVolume{Name: "data", MountPath: mnt,
		Source: "s3://data?pathStyle=true&endpoint=" + srv.Endpoint, CredentialsEnv: "SLUICE_VOL0_"})
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin, contract.SidecarSubcommand, "--listen", listen, "--staging-dir", staging, "--cache-dir", "",
		"--cache-memory", "256Mi", "--volume", string(vol))
	cmd.Env = append(baseEnv(), "SLUICE_VOL0_AWS_ACCESS_KEY_ID="+srv.AccessKey, "SLUICE_VOL0_AWS_SECRET_ACCESS_KEY="+srv.SecretKey,
		contract.EnvMemoryLimit+"="+strconv.Itoa(limit))
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cg.add(t, cmd.Process.Pid) // before it reads anything: it is still starting
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		_ = mountutil.Unmount(mnt)
		_ = mountutil.Unmount(filepath.Join(staging, "data"))
	})
	if b, err := exec.Command(bin, contract.SidecarSubcommand, "--check", "--listen", listen, "--wait", "30s").CombinedOutput(); err != nil {
		t.Fatalf("--check: %v\n%s\nsidecar:\n%s", err, b, out.String())
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := range 4 {
		wg.Go(func() {
			name := fmt.Sprintf("part-%d.bin", r%3)
			b, err := os.ReadFile(filepath.Join(mnt, name))
			if err != nil {
				errs <- err
			} else if sha256.Sum256(b) != sums[name] {
				errs <- fmt.Errorf("%s: wrong bytes", name)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("read: %v", err)
	}
	kills, peak := cg.ooms(t)
	select {
	case <-exited:
		t.Fatalf("the sidecar exited (%v) while its pod read (OOM kills: %d); output:\n%s", waitErr, kills, out.String())
	default:
	}
	if kills != 0 {
		t.Errorf("the OOM killer killed %d process(es) in the sidecar's cgroup", kills)
	}
	if !strings.Contains(out.String(), "Shrinking the caches to fit the container's memory limit") {
		t.Errorf("the sidecar did not shrink its 256Mi memory tier to fit a 200Mi limit; output:\n%s", out.String())
	}
	t.Logf("read 4 × 128Mi through a sidecar limited to 200Mi: peak %dMi, no OOM kill", peak>>20)
	cmd.Process.Signal(syscall.SIGTERM)
	<-exited
	if waitErr != nil {
		t.Errorf("the sidecar's exit after SIGTERM: %v", waitErr)
	}
	if bytes.Contains([]byte(out.String()), []byte("panic")) {
		t.Errorf("the sidecar panicked:\n%s", out.String())
	}
}
