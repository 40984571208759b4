package main

import (
	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/bench"
)

func newBenchFaultsCommand() *cobra.Command {
	o := &bench.FaultsOptions{}
	cmd := &cobra.Command{
		Use:   "faults",
		Short: "N clients read one dataset at once through cache workers while a worker or the origin misbehaves",
		Long: `Starts versitygw with a dataset behind a bandwidth-capped, byte-counting proxy,
then, once per scenario on fresh workers and fresh credential-less sluice
mounts, lets every client read the whole dataset at once while one fault is
injected: none (the baseline), stop (SIGSTOP a worker, SIGCONT it later),
delay (a worker behind a proxy holding half its requests for 2 s), drop (a
worker's proxy turns into a blackhole: connections stay open, nothing comes
back), slowdown (the origin answers 503 SlowDown to 30% of the requests; the
clients hold credentials) and restart (SIGKILL a worker and restart it on the
same cache dir and address). Every byte is checked. A scenario passes with no
read error, no wrong byte and a makespan within 1.5 × the baseline + 3 s; a
FAIL row is a result, not an error (the exit status is 0). Needs root and
/dev/fuse.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			return o.RunFaults(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
