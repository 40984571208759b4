package testutil

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// SluiceBin returns the sluice binary under test: $SLUICE_BIN (set by the
// Makefile), else one built for this test.
func SluiceBin(t testing.TB) string {
	return binary(t, "SLUICE_BIN", "github.com/sluice-dev/sluice/cmd/sluice")
}

// BenchBin returns the sluice-bench binary (benchmarks and the demo):
// $SLUICE_BENCH_BIN, else one built for this test.
func BenchBin(t testing.TB) string {
	return binary(t, "SLUICE_BENCH_BIN", "github.com/sluice-dev/sluice/cmd/sluice-bench")
}

func binary(t testing.TB, env, pkg string) string {
	t.Helper()
	if b := os.Getenv(env); b != "" {
		return b
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// Proc is a process a test started; it is killed at cleanup if still running.
type Proc struct {
	Cmd    *exec.Cmd
	Line   string // the stdout line StartProc waited for
	Stderr *SyncBuffer
}

// StartProc starts bin with args (env added to the test's environment)
// and waits up to 30 s for a stdout line containing want.
func StartProc(t testing.TB, bin string, env []string, want string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Cmd: exec.Command(bin, args...), Stderr: &SyncBuffer{}}
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stderr = p.Stderr
	stdout, err := p.Cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.Cmd.ProcessState == nil {
			p.Cmd.Process.Kill()
			p.Cmd.Wait()
		}
	})
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if strings.Contains(s.Text(), want) {
				line <- s.Text()
				break
			}
		}
		close(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case l, ok := <-line:
		if !ok {
			p.Cmd.Wait()
			t.Fatalf("%s %s did not print %q; stderr:\n%s", filepath.Base(bin), args[0], want, p.Stderr)
		}
		p.Line = l
	case <-time.After(30 * time.Second):
		t.Fatalf("%s %s did not print %q within 30s; stderr:\n%s", filepath.Base(bin), args[0], want, p.Stderr)
	}
	return p
}

// SyncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
