package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/bench"
)

func newBenchBurstCommand() *cobra.Command {
	o := &bench.BurstOptions{}
	cmd := &cobra.Command{
		Use:   "burst",
		Short: "N clients read one dataset at once: naive GETs vs rclone mounts vs sluice with cache workers",
		Long: `Starts versitygw with a dataset behind a bandwidth-capped, byte-counting proxy,
then lets N clients read the whole dataset at once in each mode: naive (every
client downloads it with parallel ranged GETs), rclone (a full-cache rclone
mount per client), sluice (a credential-less sluice mount per client over W
cache workers) and sluice-copy (each client copies the dataset through the
workers with sluice fetch, as copy mode's init container does, then reads the
copy; its time to first byte is when its copy is complete). Reports origin bytes / dataset, makespan, time to first byte
and throughput per mode. Needs root and /dev/fuse.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			return o.RunBurst(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
