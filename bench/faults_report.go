package bench

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// faultsTable renders the results.
func faultsTable(results []FaultResult, o *FaultsOptions) *Table {
	t := &Table{
		Title: fmt.Sprintf("Faults: %d clients read %d × %s at once through %d cache workers from a %s origin; one fault per scenario",
			o.Clients, o.Files, formatSize(o.fileSize), o.Workers, mbps(o.bandwidth)),
		Columns: []Column{{Name: "scenario"}, {Name: "makespan", Right: true}, {Name: "× none", Right: true},
			{Name: "bound", Right: true}, {Name: "read errors", Right: true}, {Name: "wrong bytes", Right: true},
			{Name: "origin bytes / dataset", Right: true}, {Name: "CPU clients", Right: true},
			{Name: "CPU workers", Right: true}, {Name: "outcome"}},
	}
	for _, r := range results {
		makespan := fmt.Sprintf("%.1f s", r.MakespanSec)
		if !r.Finished {
			makespan = "> " + makespan
		}
		ratio, bound := "-", "-"
		if r.MakespanOverNone > 0 {
			ratio = fmt.Sprintf("%.2f", r.MakespanOverNone)
		}
		if r.BoundSec > 0 {
			bound = fmt.Sprintf("%.1f s", r.BoundSec)
		}
		t.Rows = append(t.Rows, []string{r.Scenario, makespan, ratio, bound,
			fmt.Sprintf("%d / %d", r.ReadErrors, r.FileReads), fmt.Sprint(r.WrongBytes), fmt.Sprintf("%.2f", r.OriginRatio),
			fmt.Sprintf("%.1f s", r.ClientCPU), fmt.Sprintf("%.1f s", r.WorkerCPU), r.Outcome})
	}
	for _, r := range results {
		t.Notes = append(t.Notes, fmt.Sprintf("%s: %s", r.Scenario, r.Fault))
		if len(r.Failures) > 0 {
			t.Notes = append(t.Notes, fmt.Sprintf("%s: FAIL: %s", r.Scenario, strings.Join(r.Failures, "; ")))
		}
		if len(r.Errors) > 0 {
			t.Notes = append(t.Notes, fmt.Sprintf("%s: first read error: %s", r.Scenario, firstLine(r.Errors[0])))
		}
		for _, n := range r.Notes {
			t.Notes = append(t.Notes, fmt.Sprintf("%s: %s", r.Scenario, n))
		}
	}
	t.Notes = append(t.Notes,
		fmt.Sprintf("PASS: every file read without an error, every byte right, makespan ≤ bound = %.1f × none + %v.", boundFactor, boundSlack),
		"read errors: failed file reads of clients × files; wrong bytes: bytes of 1 MiB chunks whose checksum did not match.",
		"CPU: user + system seconds of all client mounts and of all workers (a restarted worker's processes together).")
	return t
}

func writeFaultsJSON(o *FaultsOptions, start time.Time, results []FaultResult) error {
	type parameters struct {
		FaultyWorker   int     `json:"faultyWorker"`
		FaultAfterSec  float64 `json:"faultAfterSeconds"`
		StopForSec     float64 `json:"stopForSeconds"`
		RestartAfter   float64 `json:"restartAfterSeconds"`
		DelayRate      float64 `json:"delayRate"`
		DelaySec       float64 `json:"delaySeconds"`
		SlowdownRate   float64 `json:"slowdownRate"`
		BoundFactor    float64 `json:"boundFactor"`
		BoundSlackSec  float64 `json:"boundSlackSeconds"`
		TimeoutSec     float64 `json:"timeoutSeconds"`
		RunTookSeconds float64 `json:"runTookSeconds"`
	}
	return WriteJSON(o.JSON, struct {
		Env        Env           `json:"env"`
		Settings   FaultsOptions `json:"settings"`
		Parameters parameters    `json:"parameters"`
		Results    []FaultResult `json:"results"`
	}{CollectEnv(start, map[string]string{
		"sluice":    versionOf(context.Background(), o.Sluice, "version"),
		"versitygw": versionOf(context.Background(), o.Versitygw, "--version"),
	}), *o, parameters{
		FaultyWorker: faultyWorker, FaultAfterSec: o.FaultAfter.Seconds(), StopForSec: o.StopFor.Seconds(),
		RestartAfter: o.RestartAfter.Seconds(), DelayRate: faultDelayRate, DelaySec: faultDelay.Seconds(),
		SlowdownRate: faultSlowdownRate, BoundFactor: boundFactor, BoundSlackSec: boundSlack.Seconds(),
		TimeoutSec: o.Timeout.Seconds(), RunTookSeconds: time.Since(start).Seconds(),
	}, results})
}
