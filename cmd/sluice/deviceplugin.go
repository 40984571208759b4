package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/deviceplugin"
)

func newDevicePluginCommand() *cobra.Command {
	o := &deviceplugin.Options{}
	cmd := &cobra.Command{
		Use:   "device-plugin",
		Short: "Advertise sluice.dev/fuse to the kubelet so pods get /dev/fuse without privileged",
		Long: `Serve a kubelet device plugin (API v1beta1) for the resource sluice.dev/fuse:
--devices shareable devices, each of which mounts /dev/fuse read-write into
the container that requests it. Registers again after a kubelet restart.`,
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
