package bench

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLineWatcher(t *testing.T) {
	tests := []struct {
		name   string
		want   string
		writes []string
		match  bool
	}{
		{"one write", "serving", []string{"sluice: serving s3://x at /mnt\n"}, true},
		{"split across writes", "serving", []string{"sluice: ser", "ving s3://x", " at /mnt\n"}, true},
		{"no newline yet", "serving", []string{"sluice: serving"}, false},
		{"later line", "serving", []string{"I0101 starting\nW0101 slow\n", "sluice: serving\n"}, true},
		{"never", "serving", []string{"error: no such bucket\n"}, false},
		{"nothing wanted", "", []string{"serving\n"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newLineWatcher(tc.want)
			for _, s := range tc.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			matched := false
			select {
			case <-w.matched:
				matched = true
			default:
			}
			if matched != tc.match {
				t.Errorf("matched = %v, want %v", matched, tc.match)
			}
			if w.tail() != strings.Join(tc.writes, "") {
				t.Errorf("tail %q", w.tail())
			}
		})
	}
	w := newLineWatcher("")
	big := strings.Repeat("x", 3*tailSize)
	w.Write([]byte(big + "end"))
	if got := w.tail(); len(got) != tailSize || !strings.HasSuffix(got, "end") {
		t.Errorf("tail keeps %d bytes ending %q, want the last %d", len(got), got[len(got)-3:], tailSize)
	}
}

func TestCleanExit(t *testing.T) {
	exit := func(code string) error { return exec.Command("sh", "-c", "exit "+code).Run() }
	killed := func() error {
		c := exec.Command("sleep", "10")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		c.Process.Kill()
		return c.Wait()
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"status 0", nil, true},
		{"status 143 (SIGTERM handled)", exit("143"), true},
		{"status 1", exit("1"), false},
		{"killed by a signal", killed(), false},
		{"not an exit error", errors.New("boom"), false},
	}
	for _, tc := range tests {
		if got := cleanExit(tc.err); got != tc.want {
			t.Errorf("%s: cleanExit(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestMountType(t *testing.T) {
	if _, err := os.Stat("/proc/self/mountinfo"); err != nil {
		t.Skip("no /proc/self/mountinfo")
	}
	if typ, ok := mountType("/proc"); !ok || typ != "proc" {
		t.Errorf("mountType(/proc) = %q, %v; want proc, true", typ, ok)
	}
	if _, ok := mountType(filepath.Join(t.TempDir(), "not-a-mount")); ok {
		t.Error("a plain directory is reported mounted")
	}
}

func TestChildStop(t *testing.T) {
	dir := t.TempDir()
	// A child that says it serves and exits 0 on SIGTERM, like sluice mount.
	script := `trap 'exit 0' TERM; echo "x: serving"; while :; do sleep 0.05; done`
	c, err := startChild("fake mount", filepath.Join(dir, "mnt"), "/bin/sh", []string{"-c", script}, nil, "serving")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.waitServing(t.Context(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// A child that fails before serving: its output is in the error.
	c, err = startChild("bad mount", filepath.Join(dir, "mnt"), "/bin/sh", []string{"-c", "echo no bucket; exit 3"}, nil, "serving")
	if err != nil {
		t.Fatal(err)
	}
	err = c.waitServing(t.Context(), 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "no bucket") {
		t.Fatalf("waitServing = %v, want the child's output", err)
	}
	if err := c.stop(); err == nil || !strings.Contains(err.Error(), "uncleanly") {
		t.Errorf("first stop = %v, want an unclean exit", err)
	}
	if err := c.stop(); err != nil {
		t.Errorf("second stop = %v, want nil (reported once)", err)
	}
}
