package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
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
