package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/fusesidecar"
)

func newFuseSidecarCommand() *cobra.Command {
	o := &fusesidecar.Options{}
	cmd := &cobra.Command{
		Use:   "fuse-sidecar",
		Short: "Serve a pod's sluice volumes from a sidecar (injected by sluice webhook)",
		Long: `Mount every --volume into its emptyDir: a dataset through its cache workers
(authenticated with the pod's projected token), a source from the origin with
the credentials passed as environment. Serves /readyz once every mount
serves; --check asks it (with --wait, until ready). Heartbeats to
--controller-url; exits 0 after unmounting on SIGTERM or when told to.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
