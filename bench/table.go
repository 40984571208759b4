// Package bench holds sluice's benchmarks (`sluice bench ...`): they start
// real processes (versitygw, sluice mount, rclone mount), measure, print a
// table and write every number to a JSON file. This file has what they
// share: the text table, the machine description and the JSON writer.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/sluice-dev/sluice/internal/atomicfile"
)

// Column is a table column; Right aligns its cells to the right (numbers).
type Column struct {
	Name  string
	Right bool
}

// Table is a plain-text table with aligned columns.
type Table struct {
	Title   string
	Columns []Column
	Rows    [][]string
	Notes   []string // printed below the table, one per line
}

// Render writes the table to w.
func (t *Table) Render(w io.Writer) error {
	widths := make([]int, len(t.Columns))
	for i, c := range t.Columns {
		widths[i] = utf8.RuneCountInString(c.Name)
	}
	for _, r := range t.Rows {
		for i := range min(len(r), len(widths)) {
			widths[i] = max(widths[i], utf8.RuneCountInString(r[i]))
		}
	}
	var b strings.Builder
	if t.Title != "" {
		b.WriteString(t.Title + "\n")
	}
	line := func(cells []string) {
		var l strings.Builder
		for i, c := range t.Columns {
			cell := ""
			if i < len(cells) {
				cell = cells[i]
			}
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell))
			if i > 0 {
				l.WriteString("  ")
			}
			if c.Right {
				l.WriteString(pad + cell)
			} else {
				l.WriteString(cell + pad)
			}
		}
		b.WriteString(strings.TrimRight(l.String(), " ") + "\n")
	}
	names := make([]string, len(t.Columns))
	rule := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		names[i] = c.Name
		rule[i] = strings.Repeat("-", widths[i])
	}
	line(names)
	line(rule)
	for _, r := range t.Rows {
		line(r)
	}
	for _, n := range t.Notes {
		b.WriteString(n + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Env describes the machine and the software a run measured.
type Env struct {
	Date        string            `json:"date"` // RFC 3339, when the run started
	Hostname    string            `json:"hostname"`
	Kernel      string            `json:"kernel"`
	Go          string            `json:"go"`
	OSArch      string            `json:"osArch"`
	CPUs        int               `json:"cpus"`
	MemoryBytes int64             `json:"memoryBytes"`
	Versions    map[string]string `json:"versions"` // program → version line
}

// CollectEnv describes this machine; versions lists the programs measured.
func CollectEnv(start time.Time, versions map[string]string) Env {
	e := Env{
		Date:     start.Format(time.RFC3339),
		Go:       runtime.Version(),
		OSArch:   runtime.GOOS + "/" + runtime.GOARCH,
		CPUs:     runtime.NumCPU(),
		Versions: versions,
	}
	e.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		e.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		e.MemoryBytes = int64(si.Totalram) * int64(si.Unit)
	}
	return e
}

// WriteJSON writes v, indented, to path (its directory is created); the
// file appears whole or not at all.
func WriteJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(data, '\n'), 0o644)
}

// formatSize prints n in the largest binary unit that divides it (2Gi,
// 256Mi, 8Ki), else in bytes.
func formatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d%s", n/u.size, u.suffix)
		}
	}
	return fmt.Sprintf("%dB", n)
}

// formatMBps prints a throughput in MB/s: whole numbers from 100 up.
func formatMBps(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}
