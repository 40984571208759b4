package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/internal/app"
)

func newCacheWorkerCommand() *cobra.Command {
	o := &app.WorkerOptions{}
	cmd := &cobra.Command{
		Use:   "cache-worker SOURCE",
		Short: "Serve a dataset to mounts and sidecars as a cluster-wide cache",
		Long: `Serve SOURCE over HTTP (HTTP/2 without TLS where the client speaks it) from
the worker's memory and disk cache, reading the origin once per block however
many clients ask. Clients present the bearer token in --token-file. On
SIGTERM the worker stops taking requests and finishes those in flight.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Source = args[0]
			if err := o.Validate(); err != nil {
				return err
			}
			return o.RunWorker(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
