// Command sluice is the one binary of sluice: each component is a
// subcommand (mount, fetch, cache-worker, csi, webhook, fuse-sidecar,
// device-plugin, controller, version). Benchmarks and the demo are the
// separate binary sluice-bench, so this one links no test harness.
package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/internal/cli"
)

func main() { cli.Main("sluice", newRootCommand()) }

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "sluice",
		Short:         "sluice serves datasets to bursts of pods through one cache",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cli.AddKlogFlags(root)
	root.AddCommand(newMountCommand(), newFetchCommand(), newCacheWorkerCommand(), newCSICommand(), newWebhookCommand(),
		newFuseSidecarCommand(), newDevicePluginCommand(), newControllerCommand(), newVersionCommand())
	cli.TidyHelp(root)
	return root
}
