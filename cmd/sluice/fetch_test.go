package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// fetchOrigin is a versitygw with files behind a proxy capped at bw bytes/s.
type fetchOrigin struct {
	files map[string][]byte
	total int64
	proxy *faultproxy.Proxy
	url   string
	creds []string
}

func startFetchOrigin(t *testing.T, n, size int, bw int64) *fetchOrigin {
	t.Helper()
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	o := &fetchOrigin{files: map[string][]byte{}}
	for i := 0; i < n; i++ {
		p := fmt.Sprintf("d/part-%d.bin", i)
		b := make([]byte, size+i*1001)
		r := rand.New(rand.NewPCG(uint64(i), 3))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		o.files[p], o.total = b, o.total+int64(len(b))
		srv.Put(t, "data", p, b)
	}
	proxy, err := faultproxy.New(srv.Endpoint, faultproxy.Config{BandwidthBytesPerSec: bw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	o.proxy, o.url = proxy, "s3://data?pathStyle=true&endpoint="+proxy.URL()
	o.creds = []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey}
	return o
}

// check fails unless dir holds exactly o's files (below d/) and nothing
// partial.
func (o *fetchOrigin) check(t *testing.T, dir string) {
	t.Helper()
	for p, want := range o.files {
		got, err := os.ReadFile(filepath.Join(dir, strings.TrimPrefix(p, "d/")))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: err %v, equal %v", p, err, bytes.Equal(got, want))
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != len(o.files) {
		t.Errorf("%s holds %d entries, want %d", dir, len(ents), len(o.files))
	}
}

func runFetch(t *testing.T, bin string, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"fetch"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

func TestFetchCommandBadInput(t *testing.T) {
	bin := testutil.SluiceBin(t)
	o := startFetchOrigin(t, 1, 1000, 0)
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("right\n"), 0o600)
	wrong := filepath.Join(t.TempDir(), "wrong")
	os.WriteFile(wrong, []byte("wrong\n"), 0o600)
	_, wurl := startWorkerProc(t, bin, o.creds, o.url, "--listen", "127.0.0.1:0", "--token-file", tok, "--cache-dir", "")
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	tests := []struct {
		name string
		env  []string
		args func(dir string) []string
		want string
	}{
		{"unknown scheme", nil, func(dir string) []string { return []string{"ftp://x/y", dir} }, `unknown scheme "ftp"`},
		{"relative DIR", nil, func(string) []string { return []string{o.url, "rel/dir"} }, "not an absolute path"},
		{"no arguments", nil, func(string) []string { return nil }, "want SOURCE and DIR, or --volume"},
		{"DIR is a file", o.creds, func(string) []string { return []string{o.url, file} }, file},
		{"a token the workers refuse", []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="}, func(dir string) []string {
			return []string{o.url, dir, "--workers", wurl, "--worker-token-file", wrong, "--insecure-workers", "--origin-fallback=false", "--probe-timeout", "3s"}
		}, "cache worker: unauthorized: wrong token"},
		{"a bad --volume", nil, func(string) []string { return []string{"--volume", `{"name":"x"}`} }, "--volume: want source, or dataset and workers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "copy")
			out, code := runFetch(t, bin, tc.env, tc.args(dir)...)
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, output %q; want non-zero and %q", code, out, tc.want)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("%s holds %d entries after a failed copy", dir, len(ents))
			}
		})
	}
}

// TestFetchCommandResumesAfterKill: a copy SIGKILLed mid-way leaves only
// complete files under final names, and a rerun completes it.
func TestFetchCommandResumesAfterKill(t *testing.T) {
	bin := testutil.SluiceBin(t)
	o := startFetchOrigin(t, 6, 2<<20, 8<<20) // 12 MiB at 8 MiB/s
	dir := filepath.Join(t.TempDir(), "copy")
	origin := "s3://data/d?pathStyle=true&endpoint=" + o.proxy.URL()
	cmd := exec.Command(bin, "fetch", origin, dir, "--block-size", "1Mi", "--parallel", "2")
	cmd.Env = append(os.Environ(), o.creds...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); o.proxy.BodyBytes() < o.total/2; {
		if time.Now().After(deadline) {
			t.Fatal("the copy did not get half way")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	ents, _ := os.ReadDir(dir)
	var final, partial int
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".sluice-partial") {
			partial++
			continue
		}
		final++
		got, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if !bytes.Equal(got, o.files["d/"+e.Name()]) {
			t.Errorf("%s carries its final name after the kill but is incomplete or wrong", e.Name())
		}
	}
	if partial == 0 || final == len(o.files) {
		t.Fatalf("after the kill: %d complete and %d partial files; the kill did not land mid-copy", final, partial)
	}
	before := o.proxy.BodyBytes()
	out, code := runFetch(t, bin, o.creds, origin, dir, "--block-size", "1Mi")
	if code != 0 {
		t.Fatalf("rerun: exit %d: %s", code, out)
	}
	o.check(t, dir) // the kill's partial files are gone too: the rerun wrote the same names

	if !strings.Contains(out, fmt.Sprintf("%d already there", final)) {
		t.Errorf("rerun output %q: want the %d complete files skipped", out, final)
	}
	t.Logf("kill left %d complete and %d partial files; the rerun read %d bytes", final, partial, o.proxy.BodyBytes()-before)
}

// TestFetchCommandThroughWorkers: a copy without origin credentials reads
// through two workers; one is killed mid-copy and the copy completes.
func TestFetchCommandThroughWorkers(t *testing.T) {
	bin := testutil.SluiceBin(t)
	o := startFetchOrigin(t, 4, 3<<20, 8<<20)
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("tok\n"), 0o600)
	origin := "s3://data/d?pathStyle=true&endpoint=" + o.proxy.URL()
	var workers []*exec.Cmd
	var urls []string
	for i := 0; i < 2; i++ {
		w, u := startWorkerProc(t, bin, o.creds, origin, "--listen", "127.0.0.1:0", "--token-file", tok,
			"--cache-dir", "", "--block-size", "1Mi")
		workers, urls = append(workers, w), append(urls, u)
	}
	dir := filepath.Join(t.TempDir(), "copy")
	cmd := exec.Command(bin, "fetch", origin, dir, "--workers", strings.Join(urls, ","), "--worker-token-file", tok, "--insecure-workers",
		"--origin-fallback=false", "--block-size", "1Mi", "--parallel", "4", "--worker-timeout", "5s")
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent")
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); o.proxy.BodyBytes() < o.total/3 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	workers[0].Process.Signal(syscall.SIGKILL)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("fetch with a worker killed mid-copy: %v: %s", err, out.String())
	}
	o.check(t, dir)
}
