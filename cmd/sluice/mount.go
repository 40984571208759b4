package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/internal/app"
)

func newMountCommand() *cobra.Command {
	o := &app.MountOptions{}
	cmd := &cobra.Command{
		Use:   "mount SOURCE MOUNTPOINT",
		Short: "Mount a dataset read-only through the cache (foreground)",
		Long: `Mount SOURCE (s3://bucket/prefix, file:///abs/path, http(s)://host/object) at
MOUNTPOINT, read-only, through the memory and disk cache. Runs in the
foreground, prints one line once the mount serves, and unmounts cleanly on
SIGINT/SIGTERM. S3 credentials come from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY or the AWS credentials file; none means anonymous.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Source, o.MountPoint = args[0], args[1]
			if err := o.Validate(); err != nil {
				return err
			}
			return o.RunMount(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
