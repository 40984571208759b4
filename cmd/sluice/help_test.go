package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestHelpIsQuiet: --help shows -v and --vmodule of klog's flags, plain
// booleans, and every command's flags in registration order.
func TestHelpIsQuiet(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"mount", "--help"}, {"cache-worker", "--help"}, {"csi", "--help"},
		{"fuse-sidecar", "--help"}, {"controller", "--help"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			root := newRootCommand()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetArgs(args)
			if err := root.Execute(); err != nil {
				t.Fatal(err)
			}
			help := out.String()
			for _, bad := range []string{"[=true|false]", "--add_dir_header", "--log_backtrace_at", "--logtostderr"} {
				if strings.Contains(help, bad) {
					t.Errorf("help shows %q:\n%s", bad, help)
				}
			}
			if !strings.Contains(help, "--vmodule") {
				t.Errorf("help hides --vmodule:\n%s", help)
			}
		})
	}
}

// TestBooleanFlagsStillParse: the plain bool values keep --flag,
// --flag=false and hidden klog flags working.
func TestBooleanFlagsStillParse(t *testing.T) {
	root := newRootCommand()
	mount, _, err := root.Find([]string{"mount"})
	if err != nil {
		t.Fatal(err)
	}
	fs := mount.Flags()
	if err := fs.Parse([]string{"--fuse-debug", "--origin-fallback=false", "--passthrough=true"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"fuse-debug": true, "origin-fallback": false, "passthrough": true} {
		if got, err := fs.GetBool(name); err != nil || got != want {
			t.Errorf("--%s = %v (%v), want %v", name, got, err, want)
		}
	}
	if err := root.PersistentFlags().Parse([]string{"--logtostderr=true", "-v", "2"}); err != nil {
		t.Errorf("hidden klog flags must still parse: %v", err)
	}
}
