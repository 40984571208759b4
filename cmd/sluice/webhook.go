package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/webhook"
)

func newWebhookCommand() *cobra.Command {
	o := &webhook.Options{}
	cmd := &cobra.Command{
		Use:   "webhook",
		Short: "Serve the mutating webhook that gives serverless pods a FUSE sidecar",
		Long: `Serve the admission webhook ` + webhook.Path + ` over HTTPS (certificates from
--cert-dir, reloaded when they change), with /healthz, /readyz and metrics.
Pods that opt in or target serverless nodes get their csi.sluice.dev volumes
replaced by emptyDirs that a sluice-fuse sidecar mounts.`,
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
