package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/spf13/pflag"
)

// FaultsOptions configure `sluice bench faults`: N credential-less clients
// read a dataset through W cache workers while one worker (or the origin)
// misbehaves, once per scenario, each against the run without a fault.
type FaultsOptions struct {
	Versitygw, Sluice string
	Files             int
	FileSize          string
	Clients           int
	Workers           int
	Bandwidth         string
	Scenarios         []string
	BlockSize         string
	// Timeout ends a burst that has not finished (a FAIL row).
	Timeout time.Duration
	// FaultAfter is when, after the burst starts, the stop, drop and
	// restart faults hit.
	FaultAfter time.Duration
	// StopFor is how long the stopped worker stays stopped (SIGCONT then,
	// or at the end of the burst if that comes first).
	StopFor time.Duration
	// RestartAfter is how long the killed worker stays down.
	RestartAfter time.Duration
	JSON         string
	WorkDir      string

	fileSize, bandwidth int64
}

// Fault scenarios.
const (
	FaultNone     = "none"     // baseline
	FaultStop     = "stop"     // SIGSTOP one worker at FaultAfter, SIGCONT StopFor later
	FaultDelay    = "delay"    // one worker behind a proxy holding DelayRate of its requests for Delay
	FaultDrop     = "drop"     // one worker behind a proxy that turns into a blackhole at FaultAfter
	FaultSlowdown = "slowdown" // the origin answers 503 SlowDown to SlowdownRate of its requests
	FaultRestart  = "restart"  // SIGKILL one worker at FaultAfter, restart it RestartAfter later
)

var faultScenarios = []string{FaultNone, FaultStop, FaultDelay, FaultDrop, FaultSlowdown, FaultRestart}

// The fixed parameters of the faults (from issue 15).
const (
	faultDelayRate    = 0.5
	faultDelay        = 2 * time.Second
	faultSlowdownRate = 0.3
	// A scenario passes when it reads every byte right, without an error,
	// within boundFactor × the baseline's makespan + boundSlack.
	boundFactor = 1.5
	boundSlack  = 3 * time.Second
	// faultyWorker is the index of the worker that gets the fault.
	faultyWorker = 0
	// faultSeed makes the fault proxies' choices reproducible.
	faultSeed = 15
)

// AddFlags registers the faults flags.
func (o *FaultsOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Versitygw, "versitygw", "bin/versitygw", "versitygw binary (the S3 origin)")
	fs.StringVar(&o.Sluice, "sluice", "", "sluice binary for the mounts and workers (default: the sluice beside this executable)")
	fs.IntVar(&o.Files, "files", 8, "files in the dataset")
	fs.StringVar(&o.FileSize, "file-size", "32Mi", "size of each file")
	fs.IntVar(&o.Clients, "clients", 8, "concurrent clients (one sluice mount each)")
	fs.IntVar(&o.Workers, "workers", 3, "cache workers")
	fs.StringVar(&o.Bandwidth, "bandwidth", "32M", "origin bandwidth cap in bytes/s (32M = 32 MB/s)")
	fs.StringSliceVar(&o.Scenarios, "scenarios", faultScenarios, "scenarios to run (none, the baseline, runs first)")
	fs.StringVar(&o.BlockSize, "block-size", "4Mi", "sluice block size")
	fs.DurationVar(&o.Timeout, "timeout", 180*time.Second, "a burst not done by then is stopped and fails")
	fs.DurationVar(&o.FaultAfter, "fault-after", 3*time.Second, "when the stop, drop and restart faults hit, after the burst starts")
	fs.DurationVar(&o.StopFor, "stop-for", 30*time.Second, "stop: how long the worker stays stopped (SIGCONT then or at the burst's end)")
	fs.DurationVar(&o.RestartAfter, "restart-after", time.Second, "restart: how long the killed worker stays down")
	fs.StringVar(&o.JSON, "json", "", "write the results as JSON to this file")
	fs.StringVar(&o.WorkDir, "work-dir", "", "scratch directory (default: a new one under /var/tmp, removed at the end)")
}

// Validate checks the flags.
func (o *FaultsOptions) Validate() error {
	var err error
	if o.fileSize, err = quantity("--file-size", o.FileSize); err != nil {
		return err
	}
	if o.bandwidth, err = quantity("--bandwidth", o.Bandwidth); err != nil {
		return err
	}
	if _, err := quantity("--block-size", o.BlockSize); err != nil {
		return err
	}
	if o.Files < 1 || o.Clients < 1 || o.Clients > 256 {
		return errors.New("--files must be at least 1 and --clients 1..256")
	}
	if len(o.Scenarios) == 0 {
		return errors.New("--scenarios: want at least one")
	}
	workerFault := false
	for i, s := range o.Scenarios {
		if !slices.Contains(faultScenarios, s) {
			return fmt.Errorf("--scenarios: unknown scenario %q (want %v)", s, faultScenarios)
		}
		if slices.Contains(o.Scenarios[:i], s) {
			return fmt.Errorf("--scenarios: %q twice", s)
		}
		workerFault = workerFault || (s != FaultNone && s != FaultSlowdown)
	}
	if o.Workers < 1 || (workerFault && o.Workers < 2) {
		return errors.New("--workers: want at least 1, and 2 for the worker faults (the faulty one needs a peer)")
	}
	if o.Timeout <= 0 || o.FaultAfter < 0 || o.StopFor < 0 || o.RestartAfter < 0 {
		return errors.New("--timeout must be positive, --fault-after, --stop-for and --restart-after not negative")
	}
	if _, err := os.Stat(o.Versitygw); err != nil {
		return fmt.Errorf("--versitygw %s: %w (run `make tools`)", o.Versitygw, err)
	}
	o.Sluice, err = sluiceBinary(o.Sluice)
	return err
}

// ordered is the scenarios to run, the baseline first.
func (o *FaultsOptions) ordered() []string {
	out := slices.Clone(o.Scenarios)
	if i := slices.Index(out, FaultNone); i > 0 {
		out = append([]string{FaultNone}, slices.Delete(out, i, i+1)...)
	}
	return out
}

// burstOptions is the part of the burst benchmark's options its setup and
// its process starters read.
func (o *FaultsOptions) burstOptions() *BurstOptions {
	return &BurstOptions{Versitygw: o.Versitygw, Sluice: o.Sluice, Files: o.Files, FileSize: o.FileSize,
		Clients: []int{o.Clients}, Workers: o.Workers, Bandwidth: o.Bandwidth, BlockSize: o.BlockSize,
		WorkDir: o.WorkDir, FilesAtOnce: 4, fileSize: o.fileSize, bandwidth: o.bandwidth}
}

// FaultResult is one scenario.
type FaultResult struct {
	Scenario string `json:"scenario"`
	// Fault says what was done and when (seconds since the burst start).
	Fault      string  `json:"fault"`
	FaultAtSec float64 `json:"faultAtSeconds"`
	// FaultAtOriginFraction is how much of the dataset the origin had sent
	// when the fault hit.
	FaultAtOriginFraction float64 `json:"faultAtOriginFraction"`
	Clients               int     `json:"clients"`
	Workers               int     `json:"workers"`
	DatasetBytes          int64   `json:"datasetBytes"`
	// Finished is false when the burst did not end within --timeout
	// (MakespanSec is then the timeout).
	Finished    bool    `json:"finished"`
	MakespanSec float64 `json:"makespanSeconds"`
	// MakespanOverNone (of a finished burst) and BoundSec are 0 without a
	// clean baseline.
	MakespanOverNone float64 `json:"makespanOverNone"`
	BoundSec         float64 `json:"boundSeconds"`
	// FileReads is clients × files; ReadErrors counts those that failed
	// (an error from open or read, or a short file); WrongBytes counts the
	// bytes of the 1 MiB chunks whose checksum did not match.
	FileReads   int      `json:"fileReads"`
	ReadErrors  int      `json:"readErrors"`
	WrongBytes  int64    `json:"wrongBytes"`
	OriginBytes int64    `json:"originBytes"`
	OriginRatio float64  `json:"originBytesOverDataset"`
	ClientCPU   float64  `json:"clientCPUSeconds"`
	WorkerCPU   float64  `json:"workerCPUSeconds"`
	Outcome     string   `json:"outcome"` // PASS or FAIL
	Failures    []string `json:"failures,omitempty"`
	// Errors are the first read errors, as the readers saw them.
	Errors []string `json:"errors,omitempty"`
	// Notes are what else happened: an unclean exit, a fault that came
	// after the burst had ended.
	Notes []string `json:"notes,omitempty"`
}

// RunFaults runs every scenario and reports. A scenario that fails (errors,
// wrong bytes, too slow, not done) is a FAIL row, not an error; an error is
// returned only when the harness itself fails.
func (o *FaultsOptions) RunFaults(ctx context.Context, out io.Writer) error {
	start := time.Now()
	env, cleanup, err := o.burstOptions().setup(ctx, out)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintf(out, "%d clients, %d cache workers; faults hit worker %d, %v into the burst\n",
		o.Clients, o.Workers, faultyWorker, o.FaultAfter)
	var results []FaultResult
	var runErr error
	for _, sc := range o.ordered() {
		fmt.Fprintf(out, "  %-9s running...\n", sc)
		r, err := runFault(ctx, env, o, sc)
		if err != nil {
			runErr = fmt.Errorf("scenario %s: %w", sc, err)
			break
		}
		judge(&r, results)
		fmt.Fprintf(out, "  %-9s %s in %.1f s: %d read errors, %d wrong bytes\n",
			sc, r.Outcome, r.MakespanSec, r.ReadErrors, r.WrongBytes)
		results = append(results, r)
	}
	fmt.Fprintln(out)
	faultsTable(results, o).Render(out)
	if o.JSON != "" && len(results) > 0 {
		if err := writeFaultsJSON(o, start, results); err != nil {
			return errors.Join(runErr, err)
		}
		fmt.Fprintf(out, "\nJSON: %s\n", o.JSON)
	}
	return runErr
}

// judge sets r's bound, ratio and outcome from the baseline among done.
func judge(r *FaultResult, done []FaultResult) {
	var base *FaultResult
	for i := range done {
		if b := &done[i]; b.Scenario == FaultNone && b.Outcome == "PASS" {
			base = b
		}
	}
	if !r.Finished {
		r.Failures = append(r.Failures, fmt.Sprintf("did not finish within the timeout (%.0f s)", r.MakespanSec))
	}
	if r.ReadErrors > 0 {
		r.Failures = append(r.Failures, fmt.Sprintf("%d of %d file reads failed", r.ReadErrors, r.FileReads))
	}
	if r.WrongBytes > 0 {
		r.Failures = append(r.Failures, fmt.Sprintf("%d wrong bytes", r.WrongBytes))
	}
	switch {
	case r.Scenario == FaultNone:
	case base == nil:
		r.Notes = append(r.Notes, "no clean baseline (scenario none): the makespan bound was not checked")
	default:
		r.BoundSec = boundFactor*base.MakespanSec + boundSlack.Seconds()
		if r.Finished {
			r.MakespanOverNone = r.MakespanSec / base.MakespanSec
		}
		if r.Finished && r.MakespanSec > r.BoundSec {
			r.Failures = append(r.Failures, fmt.Sprintf("makespan %.1f s over the bound %.1f s", r.MakespanSec, r.BoundSec))
		}
	}
	if r.Scenario == FaultNone && len(r.Failures) == 0 {
		r.BoundSec, r.MakespanOverNone = boundFactor*r.MakespanSec+boundSlack.Seconds(), 1
	}
	r.Outcome = "PASS"
	if len(r.Failures) > 0 {
		r.Outcome = "FAIL"
	}
}
