package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/bench"
)

func newBenchSmallFilesCommand() *cobra.Command {
	o := &bench.SmallFilesOptions{}
	cmd := &cobra.Command{
		Use:   "smallfiles",
		Short: "Compare stat and read rates of many small files, and ls -l of a large directory, with direct reads and rclone",
		Long: `Uploads many small files in many directories and one large directory to a
fresh versitygw, then, with parallel readers, stats every file, reads every
one (checking its bytes) and lists the large directory with a stat of each
entry: the gateway's files directly (page cache dropped, then warm), a fresh
sluice mount (cold, then warm) and rclone mount (cold, then warm). Needs
root and /dev/fuse.`,
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
