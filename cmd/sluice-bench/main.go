// Command sluice-bench runs sluice's benchmarks and its demo against real
// processes: a local S3 server (versitygw), cache workers and mounts of the
// sluice binary. It is a binary of its own so that sluice, which the
// images run, links no test harness.
package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/internal/cli"
)

func main() {
	root := &cobra.Command{
		Use:           "sluice-bench",
		Short:         "sluice's benchmarks and demo, on real processes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cli.AddKlogFlags(root)
	root.AddCommand(newDemoCommand(), newBenchDatapathCommand(), newBenchBurstCommand(), newBenchFaultsCommand(),
		newBenchSmallFilesCommand())
	cli.TidyHelp(root)
	cli.Main("sluice-bench", root)
}
