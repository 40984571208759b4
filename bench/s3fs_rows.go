package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	return r.peer(ctx, row, peerMount{name: "s3fs", bin: r.o.S3fs, mnt: mnt, args: args, fsType: "fuse.s3fs",
		unmountFirst: true}) // a SIGTERM can abort s3fs 1.90 in the middle of its cleanup
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
