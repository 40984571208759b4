// Command sluice-bench runs sluice's benchmarks and its demo against real
// processes: a local S3 server (versitygw), cache workers and mounts of the
// sluice binary. It is a binary of its own so that sluice, which the
// images run, links no test harness.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "sluice-bench",
		Short:         "sluice's benchmarks and demo, on real processes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cli.AddKlogFlags(root)
	root.AddCommand(newDemoCommand(), newBenchDatapathCommand(), newBenchBurstCommand(), newBenchFaultsCommand())
	cli.TidyHelp(root)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-bench:", err)
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
