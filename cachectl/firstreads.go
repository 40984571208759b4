package cachectl

import (
	"path"
	"slices"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/internal/contract"
)

// MaxFirstReads bounds a Dataset's status.firstReads.
const MaxFirstReads = 16

// maxReadPath bounds one path of a heartbeat's first reads.
const maxReadPath = 1024

// FirstReadsOf ranks the objects the pods reading dataset (within Window)
// read first: those more pods read first come first, then those read
// earlier in the pods' lists; at most MaxFirstReads.
func (d *Demand) FirstReadsOf(dataset string, now time.Time) []string {
	window := d.window()
	type score struct {
		pods, positions int
	}
	scores := map[string]*score{}
	d.mu.Lock()
	for _, r := range d.pods {
		if now.Sub(r.at) > window {
			continue
		}
		for i, p := range r.first[dataset] {
			s := scores[p]
			if s == nil {
				s = &score{}
				scores[p] = s
			}
			s.pods++
			s.positions += i
		}
	}
	d.mu.Unlock()
	out := make([]string, 0, len(scores))
	for p := range scores {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b string) int {
		sa, sb := scores[a], scores[b]
		if sa.pods != sb.pods {
			return sb.pods - sa.pods
		}
		// Mean position, compared without division.
		if l, r := sa.positions*sb.pods, sb.positions*sa.pods; l != r {
			return l - r
		}
		return strings.Compare(a, b)
	})
	if len(out) > MaxFirstReads {
		out = out[:MaxFirstReads]
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// validFirstReads keeps of a heartbeat's first reads the Datasets it
// names, at most contract.FirstReadsPerClient clean relative paths each.
func validFirstReads(hb contract.Heartbeat) map[string][]string {
	var out map[string][]string
	for _, ds := range hb.Datasets {
		var keep []string
		for _, p := range hb.FirstReads[ds] {
			if p != "" && len(p) <= maxReadPath && path.Clean("/" + p)[1:] == p {
				keep = contract.AddFirstRead(keep, p)
			}
		}
		if len(keep) > 0 {
			if out == nil {
				out = map[string][]string{}
			}
			out[ds] = keep
		}
	}
	return out
}
