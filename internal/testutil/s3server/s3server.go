// Package s3server starts a real S3 server (versitygw with its posix backend)
// for tests. Nothing is faked: requests go over HTTP to a separate process that
// stores objects in a temporary directory. Launch does the same for programs
// that are not tests (the benchmarks), with a root directory of their choice.
//
// The versitygw binary is looked up in this order: the environment variable
// SLUICE_VERSITYGW, <repo root>/bin/versitygw (installed by `make tools`), and
// PATH. When it is missing the test is skipped, except when the environment
// variable CI is set: then the test fails, because CI must run these tests.
//
// The gateway is started as
//
//	versitygw --access AK --secret SK --port 127.0.0.1:PORT --quiet \
//	    posix [--sidecar DIR] ROOT
//
// Without --keep-alive (the default) the gateway closes every connection after
// one response. Keep-alive is left off on purpose: versitygw v1.8.0 answers a
// zero-length PUT from minio-go and then writes a stray "400 Bad Request" on
// the same connection, which the next request reusing it may read as its own
// response. LaunchKeepAlive turns it on for programs that never PUT an
// empty object (the data-path benchmark), as a real S3 endpoint keeps
// connections: one connection per block otherwise costs a TCP handshake
// and slow start per 4 MiB.
//
// The posix backend keeps object metadata (ETag, content type) in user
// extended attributes; when the temporary directory does not support them,
// the metadata goes to a sidecar directory instead (--sidecar).
package s3server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/sluice-dev/sluice/internal/testutil"
)

// startTimeout bounds how long Start waits for the gateway to answer.
const startTimeout = 15 * time.Second

// Server is a running versitygw process.
type Server struct {
	// Endpoint is the gateway's base URL, "http://127.0.0.1:PORT".
	Endpoint string
	// AccessKey and SecretKey are the root account's credentials.
	AccessKey, SecretKey string
	// Root is the directory that holds the buckets (one directory each).
	Root string

	cmd      *exec.Cmd
	output   *testutil.SyncBuffer
	exited   chan struct{} // closed when the process has been waited for
	waitErr  error         // valid once exited is closed
	client   *minio.Client
	stopOnce sync.Once
}

// Start starts versitygw on a free loopback port with a fresh temporary root
// directory and registers its shutdown with t.Cleanup. The gateway's output
// is logged when the test fails.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, false)
}

// Binary returns the versitygw executable (see the package doc for where it
// is looked up) or ends the test: skipped normally, failed when CI is set.
func Binary(t testing.TB) string {
	t.Helper()
	return findBinary(t)
}

// start starts the gateway, with metadata in a sidecar directory when
// forced or when the temporary directory lacks user xattrs.
func start(t testing.TB, forceSidecar bool) *Server {
	t.Helper()
	bin := findBinary(t)

	root := t.TempDir()
	var sidecar string
	if forceSidecar || !xattrSupported(root) {
		sidecar = t.TempDir()
	}
	s, err := launchOnFreePort(bin, root, sidecar, false)
	if err != nil {
		t.Fatalf("s3server: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("versitygw output:\n%s", s.outputString())
		}
	})
	return s
}

// Launch starts versitygw bin on a free loopback port, storing buckets under
// root (created if missing), for programs other than tests (the benchmarks).
// Object metadata goes to user xattrs, or to root/../<base of root>.sidecar
// when root's file system lacks them. The caller must call Close.
func Launch(bin, root string) (*Server, error) { return launchRoot(bin, root, false) }

// LaunchKeepAlive is Launch with HTTP keep-alive on (see the package
// comment: never PUT an empty object through it).
func LaunchKeepAlive(bin, root string) (*Server, error) { return launchRoot(bin, root, true) }

func launchRoot(bin, root string, keepAlive bool) (*Server, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("s3server: %w", err)
	}
	var sidecar string
	if !xattrSupported(root) {
		sidecar = filepath.Clean(root) + ".sidecar"
		if err := os.MkdirAll(sidecar, 0o755); err != nil {
			return nil, fmt.Errorf("s3server: %w", err)
		}
	}
	s, err := launchOnFreePort(bin, root, sidecar, keepAlive)
	if err != nil {
		return nil, fmt.Errorf("s3server: %w", err)
	}
	return s, nil
}

// Close kills the gateway and waits for it to exit (the same as Stop). It
// leaves Root in place.
func (s *Server) Close() error {
	s.Stop()
	return nil
}

// Output returns what the gateway printed so far.
func (s *Server) Output() string { return s.outputString() }

// launchOnFreePort starts the gateway on a free loopback port and builds its
// client. On failure the error carries the gateway's output.
func launchOnFreePort(bin, root, sidecar string, keepAlive bool) (*Server, error) {
	s := &Server{AccessKey: "sluiceaccess", SecretKey: "sluicesecret0123456789", Root: root}
	var lastErr error
	// The free port is found by listening on :0 and closing the listener;
	// another process may grab it in between, so try a few times.
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if lastErr = s.launch(bin, addr, sidecar, keepAlive); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		return nil, fmt.Errorf("%v\noutput of versitygw:\n%s", lastErr, s.outputString())
	}
	client, err := minio.New(s.hostPort(), &minio.Options{
		Creds:  credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region: "us-east-1",
	})
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("minio client: %w", err)
	}
	s.client = client
	return s, nil
}

// launch starts the process on addr and waits until it answers HTTP.
func (s *Server) launch(bin, addr, sidecar string, keepAlive bool) error {
	args := []string{
		"--access", s.AccessKey, "--secret", s.SecretKey,
		"--port", addr, "--quiet",
	}
	if keepAlive {
		args = append(args, "--keep-alive")
	}
	args = append(args, "posix")
	if sidecar != "" {
		args = append(args, "--sidecar", sidecar)
	}
	args = append(args, s.Root)

	s.output = &testutil.SyncBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = s.output
	cmd.Stderr = s.output
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	s.Endpoint = "http://" + addr

	deadline := time.Now().Add(startTimeout)
	hc := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("versitygw exited during start-up: %v", s.waitErr)
		default:
		}
		resp, err := hc.Get(s.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil // any HTTP answer (403 for an anonymous request) will do
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("versitygw did not answer on %s within %v: %w", addr, startTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the gateway and waits for it to exit. It is safe to call more
// than once; Start registers it with t.Cleanup.
func (s *Server) Stop() {
	s.stopOnce.Do(s.kill)
}

func (s *Server) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// Client returns a minio client with the root credentials.
func (s *Server) Client() *minio.Client { return s.client }

// CreateBucket creates bucket name.
func (s *Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("s3server: create bucket %q: %v", name, err)
	}
}

// Put stores data as object key of bucket.
func (s *Server) Put(t testing.TB, bucket, key string, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := s.client.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		t.Fatalf("s3server: put %s/%s: %v", bucket, key, err)
	}
}

// Delete removes object key of bucket.
func (s *Server) Delete(t testing.TB, bucket, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client.RemoveObject(ctx, bucket, key, minio.RemoveObjectOptions{}); err != nil {
		t.Fatalf("s3server: delete %s/%s: %v", bucket, key, err)
	}
}

// SetPublicRead installs a bucket policy that lets anonymous clients list
// bucket and read its objects.
func (s *Server) SetPublicRead(t testing.TB, bucket string) {
	t.Helper()
	policy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[`+
		`{"Effect":"Allow","Principal":"*","Action":["s3:GetObject"],"Resource":["arn:aws:s3:::%[1]s/*"]},`+
		`{"Effect":"Allow","Principal":"*","Action":["s3:ListBucket"],"Resource":["arn:aws:s3:::%[1]s"]}]}`, bucket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client.SetBucketPolicy(ctx, bucket, policy); err != nil {
		t.Fatalf("s3server: set public policy on %q: %v", bucket, err)
	}
}

func (s *Server) hostPort() string {
	u, err := url.Parse(s.Endpoint)
	if err != nil {
		return s.Endpoint
	}
	return u.Host
}

func (s *Server) outputString() string {
	if s.output == nil {
		return ""
	}
	return s.output.String()
}

// findBinary returns the versitygw executable or ends the test: skipped
// normally, failed when CI is set.
func findBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SLUICE_VERSITYGW"); p != "" {
		if isExecutable(p) {
			return p
		}
		t.Fatalf("s3server: SLUICE_VERSITYGW=%q is not an executable file", p)
	}
	if root, err := repoRoot(); err == nil {
		p := filepath.Join(root, "bin", "versitygw")
		if isExecutable(p) {
			return p
		}
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("s3server: versitygw not installed (CI is set, so this is a failure): run `make tools`")
	}
	t.Skip("versitygw not installed: run `make tools`")
	return ""
}

// repoRoot walks up from the working directory to the directory holding
// go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found")
		}
		dir = parent
	}
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
