package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/internal/app"
)

func newFetchCommand() *cobra.Command {
	o := &app.FetchOptions{}
	cmd := &cobra.Command{
		Use:   "fetch SOURCE DIR",
		Short: "Copy a dataset into a directory through the cache workers or from the origin",
		Long: `Copy SOURCE (s3://bucket/prefix, file:///abs/path, http(s)://host/object) into
DIR: many blocks at once, each checked, every file written under a temporary
name and renamed when complete, modification times kept. A rerun skips the
files already copied (same size and version). With --workers the blocks come
from the cache workers. Exits non-zero naming the file and the cause if
anything fails. The webhook's copy mode runs it as an init container with
--volume instead of SOURCE DIR.`,
		Args: cobra.RangeArgs(0, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 2 {
				o.Source, o.Dir = args[0], args[1]
			} else if len(args) != 0 || o.RawVolume == "" {
				return errors.New("want SOURCE and DIR, or --volume")
			}
			if err := o.Validate(); err != nil {
				return err
			}
			_, err := o.RunFetch(cmd.Context(), cmd.ErrOrStderr())
			return err
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
