package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/bench"
)

func newDemoCommand() *cobra.Command {
	o := &bench.BurstOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a small burst end to end: a local S3 origin, two cache workers, 8 mounts",
		Long: `Start a local S3 server (versitygw) with a generated sample dataset behind a
bandwidth-capped proxy, then let 8 clients read the whole dataset at once:
first each downloading it itself, then each through its own sluice mount and
two cache workers. Prints what happened in plain words and cleans up every
process and mount it started. --keep leaves one mount up until Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "sluice demo: a burst of 8 pods reading one dataset")
			return o.RunBurst(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.AddFlags(cmd.Flags())
	cmd.Flags().BoolVar(&o.Keep, "keep", false, "leave one mount up (and print its path) until Ctrl-C")
	// The demo's smaller defaults: set the bound fields, then the help text.
	o.Files, o.FileSize, o.Clients, o.Modes = 8, "32Mi", []int{8}, []string{bench.ModeNaive, bench.ModeSluice}
	for flag, value := range map[string]string{"files": "8", "file-size": "32Mi", "clients": "[8]", "modes": "[naive,sluice]"} {
		cmd.Flags().Lookup(flag).DefValue = value
	}
	o.Plain = true
	return cmd
}
