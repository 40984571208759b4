package fetch

import (
	"context"
	"fmt"
	"os"
	"time"
)

// progress prints a progress line every ProgressEvery until the returned
// function is called: on a terminal one line rewritten in place, else one
// line per tick.
func (r *run) progress(ctx context.Context) func() {
	if r.cfg.Progress == nil {
		return func() {}
	}
	every := r.cfg.ProgressEvery
	if every <= 0 {
		every = time.Second
	}
	end := "\n"
	if isTerminal(r.cfg.Progress) {
		end = "\r"
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				if end == "\r" {
					fmt.Fprint(r.cfg.Progress, "\n")
				}
				return
			case <-ctx.Done():
				return
			case <-t.C:
				fmt.Fprint(r.cfg.Progress, r.line()+end)
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// line is the progress so far: bytes, files, rate and time left.
func (r *run) line() string {
	b, el := r.bytes.Load(), time.Since(r.start)
	rate := float64(b) / max(el.Seconds(), 1e-3)
	eta := "?"
	if rate > 0 {
		eta = time.Duration(float64(r.plan.total-b) / rate * float64(time.Second)).Round(time.Second).String()
	}
	return fmt.Sprintf("%s / %s, %d / %d files, %s/s, %s left", size(b), size(r.plan.total),
		int(r.files.Load())+r.skipped, len(r.plan.items), size(int64(rate)), eta)
}

// summary prints the last line of a copy.
func (r *run) summary(res Result, err error) {
	if err != nil {
		fmt.Fprintf(r.cfg.Progress, "sluice fetch: stopped after %d of %d files: %v\n", res.Files+res.Skipped, len(r.plan.items), err)
		return
	}
	rate := float64(res.Bytes) / max(res.Elapsed.Seconds(), 1e-3)
	fmt.Fprintf(r.cfg.Progress, "sluice fetch: %d files, %s in %s (%s/s); %d already there\n",
		res.Files+res.Skipped, size(res.Bytes), res.Elapsed.Round(10*time.Millisecond), size(int64(rate)), res.Skipped)
}

func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n), 0
	for v >= unit && u < 5 {
		v /= unit
		u++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[u-1])
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
