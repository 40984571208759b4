package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/cachectl"
)

func newControllerCommand() *cobra.Command {
	o := &cachectl.Options{}
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the cache controller: Datasets, cache workers, scaling, access and the sidecar reaper",
		Long: `Reconcile sluice.dev/v1alpha1 Datasets into StatefulSets of cache workers
behind headless Services, scale them on the throughput the FUSE sidecars
report to --heartbeat-addr, and answer a sidecar's heartbeat with "exit"
once its pod's app containers are done (so Jobs complete).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
