package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// mountProc is a running `sluice mount`.
type mountProc struct {
	cmd    *exec.Cmd
	stderr *testutil.SyncBuffer
	dir    string
}

func startMount(t *testing.T, bin string, env []string, args ...string) *mountProc {
	t.Helper()
	dir := args[1]
	t.Cleanup(func() { _ = mountutil.Unmount(dir) }) // runs after the process is killed
	p := testutil.StartProc(t, bin, env, "serving", append([]string{"mount"}, args...)...)
	return &mountProc{cmd: p.Cmd, stderr: p.Stderr, dir: dir}
}

// stop sends sig and waits; it returns the exit code.
func (p *mountProc) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	p.cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("sluice mount did not exit within 10s of %v", sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

func TestMountCommandBadInput(t *testing.T) {
	bin := testutil.SluiceBin(t)
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	dir := t.TempDir()
	creds := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown scheme", []string{"ftp://x/y", dir}, `unknown scheme "ftp"`},
		{"relative mount point", []string{"file:///tmp", "rel/dir"}, `MOUNTPOINT "rel/dir" is not an absolute path`},
		{"missing bucket", []string{"s3://", dir}, "bucket"},
		{"bucket that does not exist", []string{"s3://nope?pathStyle=true&endpoint=" + srv.Endpoint, dir}, "nope"},
		{"unreachable endpoint", []string{"s3://data?endpoint=http://127.0.0.1:1", dir, "--probe-timeout=3s"}, "cannot read"},
		{"bad size", []string{"file:///tmp", dir, "--cache-memory=lots"}, `--cache-memory "lots" is not a size`},
		{"block bigger than memory", []string{"file:///tmp", dir, "--cache-memory=8Mi", "--block-size=16Mi"}, "--cache-memory"},
		{"bad duration", []string{"file:///tmp", dir, "--metadata-ttl=soon"}, "metadata-ttl"},
		{"relative file path", []string{"file://relative/path", dir}, "absolute"},
		{"missing arguments", []string{"file:///tmp"}, "accepts 2 arg(s)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"mount"}, tc.args...)...)
			cmd.Env = append(os.Environ(), creds...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("exit 0, want an error; output:\n%s", out)
			}
			last := lastLine(string(out))
			if !strings.Contains(last, tc.want) {
				t.Errorf("last line %q does not name the problem (want %q)", last, tc.want)
			}
			if strings.Contains(string(out), srv.SecretKey) {
				t.Error("the secret key appears in the output")
			}
			if mountutil.IsMountPoint(dir) {
				t.Errorf("%s is left mounted", dir)
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func TestMountCommandServesAndStops(t *testing.T) {
	testutil.RequireRootFUSE(t)
	bin := testutil.SluiceBin(t)
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	want := bytes.Repeat([]byte("sluice"), 3<<20)
	srv.Put(t, "data", "models/m.bin", want)
	proxy, err := faultproxy.New(srv.Endpoint, faultproxy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	env := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey}
	cacheDir := t.TempDir()
	dir := filepath.Join(t.TempDir(), "mnt")
	args := []string{"s3://data/models", dir, "--s3-endpoint", proxy.URL(), "--s3-path-style",
		"--cache-dir", cacheDir, "--cache-memory", "64Mi", "--block-size", "1Mi"}

	p := startMount(t, bin, env, args...)
	got, err := os.ReadFile(filepath.Join(dir, "m.bin"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read through sluice mount: err %v, equal %v", err, bytes.Equal(got, want))
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0; stderr:\n%s", code, p.stderr)
	}
	if mountutil.IsMountPoint(dir) {
		t.Fatal("mount left behind after SIGTERM")
	}
	originAfterFirst := proxy.BodyBytes()
	if originAfterFirst < int64(len(want)) {
		t.Fatalf("origin served %d bytes, less than the file (%d)", originAfterFirst, len(want))
	}

	// Restart on the same cache dir: nothing is fetched again.
	p = startMount(t, bin, env, args...)
	got, err = os.ReadFile(filepath.Join(dir, "m.bin"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after restart: err %v", err)
	}
	if extra := proxy.BodyBytes() - originAfterFirst; extra >= 1<<20 {
		t.Errorf("restart fetched %d object bytes again, want none (listings only)", extra)
	}

	// Crash (SIGKILL) leaves a stale mount; the next start replaces it.
	p.stop(t, syscall.SIGKILL)
	p = startMount(t, bin, env, args...)
	if got, err = os.ReadFile(filepath.Join(dir, "m.bin")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after replacing a stale mount: err %v", err)
	}
	if code := p.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("exit code %d after SIGINT, want 0", code)
	}
	if mountutil.IsMountPoint(dir) {
		t.Fatal("mount left behind after SIGINT")
	}
}

func TestVersionCommand(t *testing.T) {
	out, err := exec.Command(testutil.SluiceBin(t), "version").Output()
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		t.Fatalf("sluice version: %q, %v", out, err)
	}
}
