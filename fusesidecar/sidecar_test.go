package fusesidecar_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// baseEnv is the environment without any AWS credentials.
func baseEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "AWS_") {
			env = append(env, e)
		}
	}
	return append(env, "AWS_SHARED_CREDENTIALS_FILE=/nonexistent", "AWS_CONFIG_FILE=/nonexistent")
}

// controller is a fake heartbeat endpoint: it records heartbeats and
// answers "exit" once told to.
type controller struct {
	mu       sync.Mutex
	beats    []contract.Heartbeat
	auth     []string
	exit     bool
	exitSent time.Time
}

func (c *controller) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var hb contract.Heartbeat
	if r.URL.Path != contract.HeartbeatPath || json.NewDecoder(r.Body).Decode(&hb) != nil {
		http.Error(w, "bad heartbeat", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.beats = append(c.beats, hb)
	c.auth = append(c.auth, r.Header.Get("Authorization"))
	if c.exit {
		if c.exitSent.IsZero() {
			c.exitSent = time.Now()
		}
		_ = json.NewEncoder(w).Encode(contract.HeartbeatResponse{Action: contract.HeartbeatExit})
		return
	}
	_ = json.NewEncoder(w).Encode(contract.HeartbeatResponse{})
}

// fixture is a running sidecar over two cache workers (dataset volume) and
// the origin (source volume with credentials).
type fixture struct {
	cmd        *exec.Cmd
	stderr     *testutil.SyncBuffer
	files      map[string][]byte
	dirs       []string
	ctl        *controller
	listen     string
	tokenValue string
	ready      time.Duration
}

// startFixture starts the workers and the sidecar; prepare (if any) runs on
// the volumes' mount paths before the sidecar starts.
func startFixture(t *testing.T, bin string, prepare func(t *testing.T, mountPaths []string)) *fixture {
	t.Helper()
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	f := &fixture{files: map[string][]byte{}, ctl: &controller{}, tokenValue: "projected-token"}
	for i := 0; i < 3; i++ {
		p := fmt.Sprintf("nested/part-%d.bin", i)
		b := make([]byte, 3<<20+i*4097)
		r := rand.New(rand.NewPCG(uint64(i), 7))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		f.files[p] = b
		srv.Put(t, "data", p, b)
	}
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte(f.tokenValue+"\n"), 0o600)
	creds := append(baseEnv(), "AWS_ACCESS_KEY_ID="+srv.AccessKey, "AWS_SECRET_ACCESS_KEY="+srv.SecretKey)
	origin := "s3://data?pathStyle=true&endpoint=" + srv.Endpoint
	var urls []string
	for i := 0; i < 2; i++ {
		line := testutil.StartProc(t, bin, creds, "listening on ", "cache-worker", origin, "--listen", "127.0.0.1:0",
			"--token-file", tok, "--dataset", "imagenet", "--cache-dir", t.TempDir(), "--block-size", "1Mi").Line
		urls = append(urls, "http://"+line[strings.LastIndex(line, "listening on ")+len("listening on "):])
	}
	hb := httptest.NewServer(f.ctl)
	t.Cleanup(hb.Close)
	f.dirs = []string{filepath.Join(t.TempDir(), "ds"), filepath.Join(t.TempDir(), "src")}
	vols := []contract.SidecarVolume{
		{Name: "ds", MountPath: f.dirs[0], Dataset: "team/imagenet", Workers: strings.Join(urls, ",")},
		{Name: "src", MountPath: f.dirs[1], Source: origin, SubPath: "nested", CredentialsEnv: "SLUICE_VOL1_"},
	}
	f.listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	staging := t.TempDir()
	f.dirs = append(f.dirs, filepath.Join(staging, "ds"), filepath.Join(staging, "src"))
	args := []string{contract.SidecarSubcommand, "--listen", f.listen, "--staging-dir", staging, "--controller-url", hb.URL, "--heartbeat-interval", "200ms",
		"--worker-token-file", tok, "--insecure-workers", "--cache-dir", "", "--block-size", "1Mi", "--worker-timeout", "5s"}
	for _, v := range vols {
		b, _ := json.Marshal(v)
		args = append(args, "--volume", string(b))
	}
	// The sidecar has no AWS_* credentials: the dataset reads through the
	// workers only, the source with its own variables.
	env := append(baseEnv(), "SLUICE_VOL1_AWS_ACCESS_KEY_ID="+srv.AccessKey, "SLUICE_VOL1_AWS_SECRET_ACCESS_KEY="+srv.SecretKey,
		contract.EnvPodUID+"=uid-1", contract.EnvPodNamespace+"=team", contract.EnvPodName+"=app",
		contract.EnvMemoryLimit+"=1073741824")
	if prepare != nil {
		prepare(t, f.dirs[:2])
	}
	start := time.Now()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	f.stderr = &testutil.SyncBuffer{}
	cmd.Stderr, cmd.Stdout = f.stderr, f.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.cmd = cmd
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		for _, d := range f.dirs {
			_ = mountutil.Unmount(d)
		}
	})
	// What the postStart hook runs.
	out, err := exec.Command(bin, contract.SidecarSubcommand, "--check", "--listen", f.listen, "--wait", "30s").CombinedOutput()
	if err != nil {
		t.Fatalf("--check: %v\n%s\nsidecar:\n%s", err, out, f.stderr.String())
	}
	f.ready = time.Since(start)
	if n := len(sluiceMounts(t)); n < 4 {
		t.Fatalf("%d sluice mounts while serving, want ≥ 4 (2 FUSE mounts, 2 binds)", n)
	}
	t.Logf("sidecar ready (2 volumes) %s after start", f.ready.Round(time.Millisecond))
	return f
}

func (f *fixture) readAll(t *testing.T) {
	t.Helper()
	for p, want := range f.files {
		for i, dir := range f.dirs[:2] {
			name := p
			if i == 1 {
				name = strings.TrimPrefix(p, "nested/") // the source volume is rooted at subPath
			}
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s/%s: err %v, equal %v", dir, name, err, bytes.Equal(got, want))
			}
		}
	}
}

func (f *fixture) waitExit(t *testing.T, within time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sidecar exited with %v; output:\n%s", err, f.stderr.String())
		}
	case <-time.After(within):
		t.Fatalf("sidecar did not exit within %s; output:\n%s", within, f.stderr.String())
	}
	if left := sluiceMounts(t); len(left) > 0 {
		t.Errorf("sluice mounts left after the exit: %v", left)
	}
}

// sluiceMounts lists the mount points of sluice file systems (FUSE mounts
// and their binds) that belong to this test.
func sluiceMounts(t *testing.T) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		sep := slices.Index(fields, "-")
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if fields[sep+1] == "fuse."+contract.FSName && strings.Contains(fields[4], "/"+t.Name()) {
			out = append(out, fields[4])
		}
	}
	return out
}

func TestSidecarServesAndExitsWhenTheControllerSaysSo(t *testing.T) {
	testutil.RequireRootFUSE(t)
	f := startFixture(t, testutil.SluiceBin(t), nil)
	f.readAll(t)
	// Wait for a heartbeat that reports the bytes read.
	var total int64
	for _, b := range f.files {
		total += 2 * int64(len(b))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.ctl.mu.Lock()
		var last contract.Heartbeat
		if n := len(f.ctl.beats); n > 0 {
			last = f.ctl.beats[n-1]
		}
		auth := append([]string(nil), f.ctl.auth...)
		f.ctl.mu.Unlock()
		if last.BytesServed >= total {
			if last.PodUID != "uid-1" || last.Namespace != "team" || last.Name != "app" ||
				len(last.Datasets) != 1 || last.Datasets[0] != "team/imagenet" || last.Sources != 1 {
				t.Errorf("heartbeat %+v", last)
			}
			for _, a := range auth {
				if a != "Bearer "+f.tokenValue {
					t.Fatalf("heartbeat authorization %q, want the projected token", a)
				}
			}
			// What the Dataset volume read first: every file, once (the
			// source volume has no Dataset and reports none).
			got := slices.Sorted(slices.Values(last.FirstReads["team/imagenet"]))
			if want := slices.Sorted(maps.Keys(f.files)); !slices.Equal(got, want) || len(last.FirstReads) != 1 {
				t.Errorf("heartbeat first reads %q; want the Dataset's %q", last.FirstReads, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat reported %d bytes served (last %+v)", total, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for path, want := range map[string]string{"/readyz": "ok", "/healthz": "ok", "/metrics": "sluice_bytes_served_total"} {
		resp, err := http.Get("http://" + f.listen + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %s, body lacks %q", path, resp.Status, want)
		}
	}
	if !strings.Contains(f.stderr.String(), "Go memory limit set") {
		t.Errorf("GOMEMLIMIT was not set from %s:\n%s", contract.EnvMemoryLimit, f.stderr.String())
	}
	f.ctl.mu.Lock()
	f.ctl.exit = true
	f.ctl.mu.Unlock()
	f.waitExit(t, 2*time.Second+400*time.Millisecond) // one heartbeat interval to be asked, then 2 s
	f.ctl.mu.Lock()
	sent := f.ctl.exitSent
	f.ctl.mu.Unlock()
	t.Logf("exited %s after the exit answer", time.Since(sent).Round(time.Millisecond))
	if time.Since(sent) > 2*time.Second {
		t.Errorf("exit took %s after the controller's answer, want ≤ 2s", time.Since(sent))
	}
}

// TestSidecarExitsOnSIGTERM also checks the propagation model of the pod:
// each mount path is made a shared mount (the sidecar's Bidirectional
// emptyDir) with a slave copy (an app container's HostToContainer view);
// the data must appear in the copy, and be gone from it after the exit.
func TestSidecarExitsOnSIGTERM(t *testing.T) {
	testutil.RequireRootFUSE(t)
	var views []string
	f := startFixture(t, testutil.SluiceBin(t), func(t *testing.T, paths []string) {
		for _, p := range paths {
			view := p + "-app"
			for _, d := range []string{p, view} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			steps := []struct {
				src, dst string
				flags    uintptr
			}{{p, p, unix.MS_BIND}, {"", p, unix.MS_SHARED}, {p, view, unix.MS_BIND}, {"", view, unix.MS_SLAVE}}
			for _, s := range steps {
				if err := unix.Mount(s.src, s.dst, "", s.flags, ""); err != nil {
					t.Fatalf("mount %s on %s: %v", s.src, s.dst, err)
				}
			}
			t.Cleanup(func() { _ = mountutil.Unmount(view); _ = mountutil.Unmount(p) })
			views = append(views, view)
		}
	})
	f.readAll(t)
	for p := range f.files {
		if _, err := os.Stat(filepath.Join(views[0], p)); err != nil {
			t.Errorf("the app's view of the dataset volume lacks %s: %v", p, err)
		}
	}
	start := time.Now()
	f.cmd.Process.Signal(syscall.SIGTERM)
	f.waitExit(t, 2*time.Second)
	t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	for _, v := range views {
		if entries, _ := os.ReadDir(v); len(entries) != 0 {
			t.Errorf("%s still shows the dataset after the sidecar exited (%d entries)", v, len(entries))
		}
	}
}

func TestSidecarBadInput(t *testing.T) {
	bin := testutil.SluiceBin(t)
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no volume", nil, "--volume: give at least one volume"},
		{"not JSON", []string{"--volume", "name=x"}, "--volume \"name=x\""},
		{"unknown field", []string{"--volume", `{"name":"x","mountPath":"/x","source":"s3://b","extra":1}`}, "unknown field"},
		{"relative path", []string{"--volume", `{"name":"x","mountPath":"x","source":"s3://b"}`}, "is not absolute"},
		{"both", []string{"--volume", `{"name":"x","mountPath":"/x","source":"s3://b","dataset":"a/b"}`}, "exactly one"},
		{"dataset without workers", []string{"--volume", `{"name":"x","mountPath":"/x","dataset":"a/b"}`}, "needs workers"},
		{"twice", []string{"--volume", `{"name":"x","mountPath":"/x","source":"s3://b"}`, "--volume", `{"name":"x","mountPath":"/y","source":"s3://b"}`}, "given twice"},
		{"missing credentials", []string{"--volume", fmt.Sprintf(`{"name":"x","mountPath":%q,"source":"file:///tmp","credentialsEnv":"NOPE_"}`, dir)},
			"NOPE_AWS_ACCESS_KEY_ID and NOPE_AWS_SECRET_ACCESS_KEY must both be set"},
		{"check fails clearly", []string{"--check", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--wait", "300ms"},
			"are not serving after 300ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{contract.SidecarSubcommand, "--listen", "127.0.0.1:0"}, tc.args...)...)
			cmd.Env = baseEnv()
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("err %v, output %q; want %q", err, out, tc.want)
			}
		})
	}
}
