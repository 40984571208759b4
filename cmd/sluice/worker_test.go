package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// startWorkerProc starts `sluice cache-worker` and returns its URL.
func startWorkerProc(t *testing.T, bin string, env []string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	p := testutil.StartProc(t, bin, env, "listening on ", append([]string{"cache-worker"}, args...)...)
	scheme := "http://"
	if slices.Contains(args, "--tls-cert-file") {
		scheme = "https://"
	}
	return p.Cmd, scheme + p.Line[strings.LastIndex(p.Line, "listening on ")+len("listening on "):]
}

func TestWorkersServeMountsWithoutOriginCredentials(t *testing.T) {
	testutil.RequireRootFUSE(t)
	bin := testutil.SluiceBin(t)
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	files := map[string][]byte{}
	var total int64
	for i := 0; i < 4; i++ {
		p := fmt.Sprintf("part-%d.bin", i)
		files[p] = make([]byte, 6<<20+i)
		r := rand.New(rand.NewPCG(uint64(i), 1))
		for j := range files[p] {
			files[p][j] = byte(r.Uint32())
		}
		total += int64(len(files[p]))
		srv.Put(t, "data", p, files[p])
	}
	proxy, err := faultproxy.New(srv.Endpoint, faultproxy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("worker-token\n"), 0o600)
	creds := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey}
	origin := "s3://data?pathStyle=true&endpoint=" + proxy.URL()
	var workers []*exec.Cmd
	var urls []string
	// The workers serve TLS, as on a cluster: the token goes only over it.
	serveTLS, verifyTLS := testutil.WorkerTLS(t)
	for i := 0; i < 2; i++ {
		w, u := startWorkerProc(t, bin, creds, slices.Concat([]string{origin}, serveTLS, []string{"--listen", "127.0.0.1:0", "--token-file", tok,
			"--cache-dir", t.TempDir(), "--block-size", "1Mi", "--max-fetches", "4"})...)
		workers, urls = append(workers, w), append(urls, u)
	}
	// Clients hold no origin credentials: listings, stats and bytes come
	// from the workers alone.
	noCreds := []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}
	var dirs []string
	for i := 0; i < 4; i++ {
		dir := filepath.Join(t.TempDir(), "mnt")
		startMount(t, bin, noCreds, slices.Concat([]string{origin, dir}, verifyTLS, []string{"--workers", strings.Join(urls, ","), "--worker-token-file", tok,
			"--cache-dir", t.TempDir(), "--block-size", "1Mi", "--worker-timeout", "5s"})...)
		dirs = append(dirs, dir)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	// Kill a worker once a third of the data has come from the origin.
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		for deadline := time.Now().Add(20 * time.Second); proxy.BodyBytes() < total/3 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		workers[0].Process.Signal(syscall.SIGKILL)
	}()
	for _, dir := range dirs {
		for p, want := range files {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := os.ReadFile(filepath.Join(dir, p))
				if err != nil || !bytes.Equal(got, want) {
					errs <- fmt.Errorf("%s/%s: err %v, equal %v", dir, p, err, bytes.Equal(got, want))
				}
			}()
		}
	}
	wg.Wait()
	<-killed
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := proxy.BodyBytes(); got > total*3/2 {
		t.Errorf("origin served %d bytes for %d bytes of data read by 4 clients; want ≤ 1.5×", got, total)
	}
	t.Logf("origin bytes / dataset bytes = %.3f", float64(proxy.BodyBytes())/float64(total))
}
