package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
)

func testCommand() *cobra.Command {
	root := &cobra.Command{Use: "tool", RunE: func(*cobra.Command, []string) error { return nil }}
	AddKlogFlags(root)
	sub := &cobra.Command{Use: "sub", RunE: func(*cobra.Command, []string) error { return nil }}
	sub.Flags().String("zeta", "", "set first")
	sub.Flags().Bool("fuse-debug", false, "a boolean")
	sub.Flags().Bool("origin-fallback", true, "a boolean on by default")
	sub.Flags().String("alpha", "", "set last")
	root.AddCommand(sub)
	TidyHelp(root)
	return root
}

// TestHelpIsQuiet: --help shows -v and --vmodule of klog's flags, plain
// booleans, and flags in registration order.
func TestHelpIsQuiet(t *testing.T) {
	root := testCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"sub", "--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	for _, bad := range []string{"[=true|false]", "--add_dir_header", "--log_backtrace_at", "--logtostderr"} {
		if strings.Contains(help, bad) {
			t.Errorf("help shows %q:\n%s", bad, help)
		}
	}
	if !strings.Contains(help, "--vmodule") || !strings.Contains(help, "--fuse-debug ") {
		t.Errorf("help lacks --vmodule or a plain --fuse-debug:\n%s", help)
	}
	if strings.Index(help, "--zeta") > strings.Index(help, "--alpha") {
		t.Errorf("flags are sorted, not in registration order:\n%s", help)
	}
}

// TestBooleanFlagsStillParse: plain booleans keep --flag and --flag=false
// working, and hidden klog flags still parse.
func TestBooleanFlagsStillParse(t *testing.T) {
	root := testCommand()
	sub, _, err := root.Find([]string{"sub"})
	if err != nil {
		t.Fatal(err)
	}
	fs := sub.Flags()
	if err := fs.Parse([]string{"--fuse-debug", "--origin-fallback=false"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"fuse-debug": true, "origin-fallback": false} {
		if got, err := fs.GetBool(name); err != nil || got != want {
			t.Errorf("--%s = %v (%v), want %v", name, got, err, want)
		}
	}
	if err := root.PersistentFlags().Parse([]string{"--logtostderr=true", "-v", "2"}); err != nil {
		t.Errorf("hidden klog flags must still parse: %v", err)
	}
}

// TestVerbosityIsCapped: -v and --vmodule above MaxVerbosity are lowered
// to it, so that client-go never logs request bodies (tokens, keys).
func TestVerbosityIsCapped(t *testing.T) {
	t.Cleanup(func() { _ = testCommand().PersistentFlags().Parse([]string{"-v=0", "--vmodule="}) })
	for _, tc := range []struct {
		args          []string
		on, off       klog.Level
		vmodule, want string
	}{
		{args: []string{"-v=10"}, on: MaxVerbosity, off: MaxVerbosity + 1},
		{args: []string{"-v", "8"}, on: MaxVerbosity, off: MaxVerbosity + 1},
		{args: []string{"-v=3"}, on: 3, off: 4},
		{args: []string{"-v=2", "--vmodule=request=10,pool=4"}, on: 2, off: 3, vmodule: "vmodule", want: "request=7,pool=4"},
	} {
		root := testCommand()
		fs := root.PersistentFlags()
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if !klog.V(tc.on).Enabled() || klog.V(tc.off).Enabled() {
			t.Errorf("%v: V(%d) %v, V(%d) %v; want on, off", tc.args, tc.on, klog.V(tc.on).Enabled(), tc.off, klog.V(tc.off).Enabled())
		}
		if tc.vmodule != "" {
			if got := fs.Lookup(tc.vmodule).Value.String(); got != tc.want {
				t.Errorf("%v: --vmodule %q, want %q", tc.args, got, tc.want)
			}
		}
	}
}
