package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/bench"
)

func newBenchDatapathCommand() *cobra.Command {
	o := &bench.Options{}
	cmd := &cobra.Command{
		Use:   "datapath",
		Short: "Compare sluice's read throughput with direct reads, parallel GETs, a go-fuse loopback and rclone",
		Long: `Uploads one big file and several small ones to a fresh versitygw, then reads
them with one sequential reader (W1) and with one parallel reader per small
file (W2) in several ways: the gateway's files directly, parallel ranged GETs,
sluice mount cold and warm (with and without passthrough), a go-fuse loopback
mount and rclone mount cold and warm. Needs root and /dev/fuse.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
