package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/driver"
)

func newCSICommand() *cobra.Command {
	o := &driver.Options{}
	cmd := &cobra.Command{
		Use:   "csi",
		Short: "Serve the CSI driver csi.sluice.dev (controller, node or both)",
		Long: `Serve the CSI driver csi.sluice.dev on a unix socket. --mode node mounts one
FUSE session per dataset and node (served by a child process that outlives
restarts of this one) and binds it into pods read-only; --mode controller
validates StorageClass parameters and creates volumes; --mode all does both.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if v := cmd.Flags().Lookup("v"); v != nil && v.Changed {
				o.ChildArgs = append(o.ChildArgs, "-v="+v.Value.String())
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	o.AddFlags(cmd.Flags())
	cmd.AddCommand(newServeSessionCommand())
	return cmd
}

// newServeSessionCommand is the process that serves one FUSE session for
// the node plugin; the node plugin starts it, nobody else needs to.
func newServeSessionCommand() *cobra.Command {
	o := &driver.ServeOptions{}
	cmd := &cobra.Command{
		Use:    "serve-session",
		Short:  "Serve one dataset session for the CSI node plugin (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return driver.ServeSession(cmd.Context(), o)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
