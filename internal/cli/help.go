// Package cli holds what sluice's binaries share on the command line:
// klog's flags, all but -v and --vmodule hidden from --help, a help that
// lists flags in registration order with plain booleans, and Main.
package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

// klogVisible are the klog flags --help shows; the others still work.
var klogVisible = map[string]bool{"v": true, "vmodule": true}

// MaxVerbosity caps -v and every --vmodule level: from 8 on, client-go
// logs the bodies of API requests and answers, and those carry secrets
// (pods' tokens in TokenReviews, the CA's key in its Secret).
const MaxVerbosity = 7

// AddKlogFlags registers klog's flags on root, all but -v and --vmodule
// hidden from --help (as kubectl does); -v and --vmodule are capped at
// MaxVerbosity.
func AddKlogFlags(root *cobra.Command) {
	gfs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(gfs)
	for _, name := range []string{"v", "vmodule"} {
		f := gfs.Lookup(name)
		f.Value = cappedLevel{f.Value}
	}
	root.PersistentFlags().AddGoFlagSet(gfs)
	gfs.VisitAll(func(f *flag.Flag) {
		if !klogVisible[f.Name] {
			_ = root.PersistentFlags().MarkHidden(f.Name)
		}
	})
}

// cappedLevel is -v or --vmodule with every level above MaxVerbosity
// lowered to it (and said so on stderr).
type cappedLevel struct{ flag.Value }

func (c cappedLevel) Set(s string) error {
	parts := strings.Split(s, ",")
	capped := false
	for i, p := range parts {
		pattern, level, hasPattern := strings.Cut(p, "=")
		if !hasPattern {
			level, pattern = p, ""
		}
		if n, err := strconv.Atoi(level); err == nil && n > MaxVerbosity {
			level, capped = strconv.Itoa(MaxVerbosity), true
		}
		if hasPattern {
			parts[i] = pattern + "=" + level
		} else {
			parts[i] = level
		}
	}
	if capped {
		fmt.Fprintf(os.Stderr, "log levels above %d are lowered to %d: from 8 on, the Kubernetes client logs request and answer bodies, which carry tokens and keys\n", MaxVerbosity, MaxVerbosity)
	}
	return c.Value.Set(strings.Join(parts, ","))
}

// TidyHelp makes every command's --help list flags in the order they are
// registered (the ones a user sets first, first) and show booleans as
// plain --flag (pflag writes --flag[=true|false]).
func TidyHelp(cmd *cobra.Command) {
	cmd.InitDefaultHelpFlag()
	for _, fs := range []*pflag.FlagSet{cmd.Flags(), cmd.PersistentFlags()} {
		fs.SortFlags = false
		fs.VisitAll(func(f *pflag.Flag) {
			if f.Value.Type() == "bool" {
				if _, wrapped := f.Value.(plainBool); !wrapped {
					f.Value = plainBool{f.Value}
				}
			}
		})
	}
	for _, c := range cmd.Commands() {
		TidyHelp(c)
	}
}

// plainBool is a bool flag's value without pflag's IsBoolFlag, so its
// usage line reads --flag; NoOptDefVal "true" keeps --flag meaning true.
type plainBool struct{ pflag.Value }

// Main runs root until SIGINT or SIGTERM and exits 1 with "name: error"
// on stderr when it fails; klog is flushed either way.
func Main(name string, root *cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	klog.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}
