package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/internal/mountutil"
)

// s3fsSkip says why s3fs rows cannot run with binary s3fs ("" if they can).
func s3fsSkip(s3fs string) string {
	switch {
	case s3fs == "":
		return "no --s3fs given"
	case !isExecutable(s3fs):
		return fmt.Sprintf("--s3fs %q is not an executable file", s3fs)
	}
	return ""
}

// s3fs measures a fresh `s3fs` mount (Debian's s3fs-fuse) with its disk
// cache in cacheDir: the second peer beside rclone.
func (r *runner) s3fs(ctx context.Context, row *Row, cacheDir string) error {
	mnt := filepath.Join(r.work, "mnt-"+row.Key)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return err
	}
	passwd := filepath.Join(r.work, "s3fs.passwd")
	if err := os.WriteFile(passwd, []byte(r.gw.AccessKey+":"+r.gw.SecretKey+"\n"), 0o600); err != nil {
		return err
	}
	args := []string{Bucket, mnt, "-f", "-o", "url=" + r.gw.Endpoint, "-o", "use_path_request_style",
		"-o", "passwd_file=" + passwd, "-o", "use_cache=" + cacheDir, "-o", "ro", "-o", "endpoint=us-east-1"}
	c, err := startChild("s3fs", mnt, r.o.S3fs, args, nil, "")
	if err != nil {
		return err
	}
	r.cl.add(c.stop)
	defer c.stop()
	if err := c.waitMounted(ctx, "fuse.s3fs", mountTimeout); err != nil {
		return err
	}
	w, err := r.readBoth(ctx, mnt)
	if err != nil {
		return fmt.Errorf("%w; s3fs output:\n%s", err, c.out.tail())
	}
	// s3fs ends when its mount goes; a SIGTERM can abort it (1.90) in
	// the middle of its cleanup. Its exit status is not what is measured.
	if err := mountutil.Unmount(mnt); err == nil {
		select {
		case <-c.exited:
		case <-time.After(stopTimeout):
		}
	}
	if err := c.stop(); err != nil {
		row.Notes = append(row.Notes, "s3fs did not stop cleanly after the reads: "+firstLine(err.Error()))
	}
	setBoth(row, w)
	row.Settings = "s3fs " + strings.Join(args, " ")
	cpu := c.cpuSeconds()
	row.CPUPerGiB = cpu / (float64(w[0].Bytes+w[1].Bytes) / (1 << 30))
	row.Extra = map[string]any{"s3fsCPUSeconds": cpu}
	row.Notes = append(row.Notes, fmt.Sprintf("s3fs used %.1f CPU-seconds (user+sys) for %s",
		cpu, formatBytes(w[0].Bytes+w[1].Bytes)))
	return nil
}

// s3fsVersion is the first line of `s3fs --version`.
func s3fsVersion(ctx context.Context, s3fs string) string {
	if s3fs == "" {
		return ""
	}
	out, err := exec.CommandContext(ctx, s3fs, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return line
}
