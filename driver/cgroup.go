package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// escapeCgroup moves process pid into the cgroup name directly below the
// root of every cgroup hierarchy mounted under root: each controller's
// hierarchy on cgroup v1, the single tree on v2. A container runtime kills
// the processes of a container's cgroup when the container stops; a FUSE
// session moved out of it outlives a restart of the node plugin's
// container (which also needs hostPID, so that the session is not in the
// container's PID namespace either), and the restarted plugin adopts it.
func escapeCgroup(root, name string, pid int) error {
	if name == "" || filepath.Base(name) != name || name == "." || name == ".." {
		return fmt.Errorf("%w: session cgroup %q must be a plain name", errInvalid, name)
	}
	var dirs []string
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err == nil {
		dirs = []string{root} // cgroup v2
	} else {
		entries, err := os.ReadDir(root)
		if err != nil {
			return fmt.Errorf("session cgroup: %w", err)
		}
		for _, e := range entries {
			d := filepath.Join(root, e.Name())
			if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err == nil {
				dirs = append(dirs, d)
			}
		}
	}
	if len(dirs) == 0 {
		return fmt.Errorf("session cgroup: no cgroup hierarchy under %s", root)
	}
	var errs []error
	for _, d := range dirs {
		cg := filepath.Join(d, name)
		if err := os.Mkdir(cg, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			errs = append(errs, err)
			continue
		}
		// cpuset (v1) needs its cpus and mems before it takes a process.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(cg, f)); err == nil && len(b) <= 1 {
				if parent, err := os.ReadFile(filepath.Join(d, f)); err == nil {
					_ = os.WriteFile(filepath.Join(cg, f), parent, 0o644)
				}
			}
		}
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("moving pid %d into %s: %w", pid, cg, err))
		}
	}
	return errors.Join(errs...)
}
