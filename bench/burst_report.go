package bench

import (
	"context"
	"fmt"
	"io"
	"time"
)

// burstTable renders the results.
func burstTable(results []BurstResult, o *BurstOptions) *Table {
	t := &Table{
		Title: fmt.Sprintf("Burst: %d clients read %d × %s at once through a %s origin (%d cache workers)",
			o.Clients[0], o.Files, formatSize(o.fileSize), mbps(o.bandwidth), o.Workers),
		Columns: []Column{{Name: "mode"}, {Name: "N", Right: true}, {Name: "origin bytes / dataset", Right: true},
			{Name: "makespan", Right: true}, {Name: "makespan / (dataset / bw)", Right: true}, {Name: "origin idle", Right: true},
			{Name: "TTFB p50", Right: true}, {Name: "TTFB p99", Right: true}, {Name: "aggregate", Right: true},
			{Name: "client peak RSS", Right: true}, {Name: "client CPU-s", Right: true}, {Name: "verified"}},
	}
	if len(o.Clients) > 1 {
		t.Title = fmt.Sprintf("Burst: N clients read %d × %s at once through a %s origin (%d cache workers)",
			o.Files, formatSize(o.fileSize), mbps(o.bandwidth), o.Workers)
	}
	for _, r := range results {
		t.Rows = append(t.Rows, []string{r.Mode, fmt.Sprint(r.Clients), fmt.Sprintf("%.2f", r.OriginRatio),
			fmt.Sprintf("%.1f s", r.MakespanSec), fmt.Sprintf("%.2f", r.MakespanOverIdeal), fmt.Sprintf("%.0f %%", 100*r.OriginIdle),
			fmt.Sprintf("%.0f ms", r.TTFBp50Ms), fmt.Sprintf("%.0f ms", r.TTFBp99Ms),
			formatMBps(r.AggregateMBps) + " MB/s", clientRSS(r), clientCPU(r), fmt.Sprint(r.Verified)})
	}
	t.Notes = []string{
		"origin bytes / dataset: how many times the origin served the dataset (1.00 = once).",
		"makespan / (dataset / bw): burst time over the time to read the dataset once at the origin's bandwidth.",
		"origin idle: the share of 100 ms ticks, from the origin's first byte to its last, in which it sent under a tenth of its bandwidth.",
		"client peak RSS / CPU-s: the largest resident set of one mounted client (getrusage) and one client's mean user+sys CPU.",
	}
	for _, r := range results {
		if r.Note != "" {
			t.Notes = append(t.Notes, fmt.Sprintf("%s N=%d: %s.", r.Mode, r.Clients, r.Note))
		}
	}
	return t
}

func clientRSS(r BurstResult) string {
	if r.ClientPeakRSS == 0 {
		return "-"
	}
	return formatBytes(r.ClientPeakRSS)
}

func clientCPU(r BurstResult) string {
	if r.ClientPeakRSS == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r.ClientCPUSec)
}

func printBurst(out io.Writer, results []BurstResult, o *BurstOptions) {
	fmt.Fprintln(out)
	burstTable(results, o).Render(out)
	if o.Plain {
		explain(out, results)
	}
}

// explain says what the numbers mean, for a newcomer (the demo).
func explain(out io.Writer, results []BurstResult) {
	byMode := map[string]BurstResult{}
	for _, r := range results {
		byMode[r.Mode] = r
	}
	naive, okN := byMode[ModeNaive]
	s, okS := byMode[ModeSluice]
	fmt.Fprintln(out)
	if okN {
		fmt.Fprintf(out, "Without sluice, %d pods each downloaded the dataset themselves: the origin sent it %.1f times "+
			"and the burst took %.1f s.\n", naive.Clients, naive.OriginRatio, naive.MakespanSec)
	}
	if okS {
		fmt.Fprintf(out, "With sluice, the %d pods read through %s: the origin sent the dataset %.2f times "+
			"and the burst took %.1f s", s.Clients, "the cache workers", s.OriginRatio, s.MakespanSec)
		if okN && s.MakespanSec > 0 {
			fmt.Fprintf(out, " — %.1f× faster", naive.MakespanSec/s.MakespanSec)
		}
		fmt.Fprintln(out, ".")
		fmt.Fprintln(out, "Every byte every pod read was checked against the original data.")
	}
}

func writeBurstJSON(o *BurstOptions, results []BurstResult) error {
	return WriteJSON(o.JSON, struct {
		Env      Env           `json:"env"`
		Settings BurstOptions  `json:"settings"`
		Results  []BurstResult `json:"results"`
	}{CollectEnv(time.Now(), map[string]string{
		"sluice":    versionOf(context.Background(), o.Sluice, "version"),
		"versitygw": versionOf(context.Background(), o.Versitygw, "--version"),
	}), *o, results})
}

// mbps formats a bandwidth in bytes/s as decimal MB/s.
func mbps(bytesPerSec int64) string { return fmt.Sprintf("%g MB/s", float64(bytesPerSec)/1e6) }
