package bench

import (
	"fmt"
	"strings"
)

// Row is one line of the data-path table: a way of reading the data set,
// measured on both workloads.
type Row struct {
	Key  string `json:"key"`
	Name string `json:"name"`
	// Reference is the Key of the row this one is compared with (its
	// Measurement.Ratio); Target, when set, is what the ratio must meet.
	Reference string  `json:"reference,omitempty"`
	Target    *Target `json:"target,omitempty"`
	// Meaning says in one sentence what the row measures.
	Meaning  string         `json:"meaning"`
	Settings string         `json:"settings,omitempty"`
	W1       *Measurement   `json:"w1,omitempty"`
	W2       *Measurement   `json:"w2,omitempty"`
	Skipped  string         `json:"skipped,omitempty"`
	Error    string         `json:"error,omitempty"`
	Extra    map[string]any `json:"extra,omitempty"`
	Notes    []string       `json:"notes,omitempty"`
	// CPUPerGiB is the measured process's user+sys CPU-seconds per GiB
	// read (the mount's; 0: not measured); Limits are upper bounds on it
	// and on other per-row numbers.
	CPUPerGiB float64 `json:"cpuPerGiB,omitempty"`
	Limits    []Limit `json:"limits,omitempty"`
}

// Limit is an upper bound on a number a row measured (CPU-seconds per
// GiB, peak RSS); Value is filled in by the measurement.
type Limit struct {
	Name  string  `json:"name"`
	Unit  string  `json:"unit"`
	Max   float64 `json:"max"`
	Value float64 `json:"value"`
	Set   bool    `json:"set"` // Value was measured
}

// limit returns the row's limit named name (nil: none).
func (r *Row) limit(name string) *Limit {
	for i := range r.Limits {
		if r.Limits[i].Name == name {
			return &r.Limits[i]
		}
	}
	return nil
}

// measured records v for the row's limit named name, if it has one.
func (r *Row) measured(name string, v float64) {
	if l := r.limit(name); l != nil {
		l.Value, l.Set = v, true
	}
}

func (r *Row) workloads() [2]*Measurement { return [2]*Measurement{r.W1, r.W2} }

// Target is a goal on a row's ratio to its reference.
type Target struct {
	Op    string  `json:"op"` // ">=" or "<"
	Ratio float64 `json:"ratio"`
}

// Met reports whether ratio meets the target.
func (t Target) Met(ratio float64) bool {
	switch t.Op {
	case ">=":
		return ratio >= t.Ratio
	case "<":
		return ratio < t.Ratio
	}
	return false
}

func (t Target) String() string {
	op := t.Op
	if op == ">=" {
		op = "≥"
	}
	return fmt.Sprintf("%s %.2f", op, t.Ratio)
}

// TargetResult is one target evaluated on one workload.
type TargetResult struct {
	Row       string  `json:"row"`
	Workload  string  `json:"workload"`
	Reference string  `json:"reference"`
	Target    string  `json:"target"`
	Ratio     float64 `json:"ratio"`
	Pass      bool    `json:"pass"`
}

// evaluate sets every measured row's ratio to its reference and, where the
// row has a target, whether it is met; it returns the targets evaluated. A
// target whose row or reference was not measured is not evaluated.
func evaluate(rows []*Row) []TargetResult {
	byKey := map[string]*Row{}
	for _, r := range rows {
		byKey[r.Key] = r
	}
	var results []TargetResult
	for _, r := range rows {
		for _, l := range r.Limits {
			if l.Set {
				results = append(results, TargetResult{Row: r.Name, Workload: "W1+W2", Target: fmt.Sprintf("%s ≤ %g %s", l.Name, l.Max, l.Unit),
					Ratio: l.Value, Pass: l.Value <= l.Max})
			}
		}
		ref := byKey[r.Reference]
		if ref == nil {
			continue
		}
		refW := ref.workloads()
		for i, m := range r.workloads() {
			if m == nil || refW[i] == nil || refW[i].MBps <= 0 {
				continue
			}
			m.Ratio = m.MBps / refW[i].MBps
			if r.Target == nil {
				continue
			}
			pass := r.Target.Met(m.Ratio)
			m.Pass = &pass
			results = append(results, TargetResult{
				Row: r.Name, Workload: fmt.Sprintf("W%d", i+1), Reference: ref.Name,
				Target: r.Target.String(), Ratio: m.Ratio, Pass: pass,
			})
		}
	}
	return results
}

// datapathTable lays out the report for the terminal.
func datapathTable(rep *DatapathReport) *Table {
	t := &Table{
		Title: fmt.Sprintf("sluice bench datapath — W1: 1 reader × %s file; W2: %d readers × %s files; %s reads; MB/s = 10^6 bytes/s",
			formatSize(rep.BigSize), rep.SmallCount, formatSize(rep.SmallSize),
			formatSize(int64(ReadSize))),
		Columns: []Column{
			{Name: "row"}, {Name: "W1 MB/s", Right: true}, {Name: "×ref", Right: true},
			{Name: "W2 MB/s", Right: true}, {Name: "×ref", Right: true},
			{Name: "reference"}, {Name: "target"}, {Name: "W1"}, {Name: "W2"},
			{Name: "CPU-s/GiB", Right: true}, {Name: "≤"}, {Name: "CPU"},
		},
	}
	names := map[string]string{}
	for _, r := range rep.Rows {
		names[r.Key] = r.Name
	}
	for _, r := range rep.Rows {
		cells := []string{r.Name}
		switch {
		case r.Skipped != "":
			cells = append(cells, "skipped", "", "skipped", "")
		case r.Error != "" && r.W1 == nil:
			cells = append(cells, "error", "", "error", "")
		default:
			for _, m := range r.workloads() {
				cells = append(cells, mbpsCell(m), ratioCell(m))
			}
		}
		target := ""
		if r.Target != nil {
			target = r.Target.String()
		}
		cells = append(cells, names[r.Reference], target)
		for _, m := range r.workloads() {
			cells = append(cells, passCell(m))
		}
		cells = append(cells, cpuCells(r)...)
		t.Rows = append(t.Rows, cells)
	}
	for _, r := range rep.Rows {
		switch {
		case r.Skipped != "":
			t.Notes = append(t.Notes, fmt.Sprintf("%s: skipped: %s", r.Name, r.Skipped))
		case r.Error != "":
			t.Notes = append(t.Notes, fmt.Sprintf("%s: ERROR: %s", r.Name, firstLine(r.Error)))
		}
		for _, n := range r.Notes {
			t.Notes = append(t.Notes, fmt.Sprintf("%s: %s", r.Name, n))
		}
		for _, l := range r.Limits {
			if l.Set && l.Name != cpuLimit {
				t.Notes = append(t.Notes, fmt.Sprintf("%s: %s %.1f %s (target ≤ %g) %s", r.Name, l.Name, l.Value, l.Unit, l.Max, passWord(l.Value <= l.Max)))
			}
		}
	}
	passed, total := 0, len(rep.Targets)
	for _, tr := range rep.Targets {
		if tr.Pass {
			passed++
		}
	}
	t.Notes = append(t.Notes, rep.Notes...)
	t.Notes = append(t.Notes, fmt.Sprintf("targets met: %d of %d; run took %.0fs; kernel %s, %s, %d CPUs",
		passed, total, rep.Seconds, rep.Env.Kernel, rep.Env.Go, rep.Env.CPUs))
	return t
}

// cpuLimit is the name of the CPU-seconds-per-GiB limit of a row.
const cpuLimit = "CPU"

// cpuCells are a row's CPU-seconds per GiB, its limit and whether it holds.
func cpuCells(r *Row) []string {
	if r.CPUPerGiB <= 0 {
		return []string{"", "", ""}
	}
	cells := []string{fmt.Sprintf("%.2f", r.CPUPerGiB), "", ""}
	if l := r.limit(cpuLimit); l != nil && l.Set {
		cells[1], cells[2] = fmt.Sprintf("%g", l.Max), passWord(l.Value <= l.Max)
	}
	return cells
}

func passWord(ok bool) string {
	if ok {
		return "pass"
	}
	return "FAIL"
}

func mbpsCell(m *Measurement) string {
	if m == nil {
		return "-"
	}
	return formatMBps(m.MBps)
}

func ratioCell(m *Measurement) string {
	if m == nil || m.Ratio == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", m.Ratio)
}

func passCell(m *Measurement) string {
	switch {
	case m == nil || m.Pass == nil:
		return ""
	case *m.Pass:
		return "pass"
	default:
		return "FAIL"
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
