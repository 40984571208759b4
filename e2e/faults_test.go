//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/cachectl"
	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
)

// Issue 15: a cache worker that stops answering mid-burst (SIGSTOP: its
// connections stay open, it answers nothing) costs the burst seconds,
// never an error. A Dataset with two workers serves a burst of 16 converted
// pods twice: once without a fault (the baseline), then with one worker's
// process stopped from the host 3 s after the first pod's app started and
// continued 30 s later (or when the burst is over). Every pod must verify
// its file's sha256 (a pod that does not fails the Job), and the stopped
// worker must be ready again afterwards.
func TestBurstSurvivesStoppedWorker(t *testing.T) {
	e, ns := shared, "e2e-stopped-worker"
	const (
		dataset   = "stopped"
		n         = 16
		stopAfter = 3 * time.Second
		stopFor   = 30 * time.Second
	)
	e.namespace(t, ns)
	plain, faulted := pattern(64<<20), pattern(64<<20)
	for i := range faulted { // other bytes, so nothing of the first burst is reused
		faulted[i] ^= 0xa5
	}
	e.origin.put(t, "stopped", map[string][]byte{"plain.bin": plain, "faulted.bin": faulted})
	c := e.crClient(t)
	e.dataset(t, c, e.origin, ns, dataset, "stopped", v1alpha1.CacheSpec{Memory: ptr.To(resource.MustParse("128Mi")),
		Disk: ptr.To(resource.MustParse("1Gi")), MinWorkers: ptr.To[int32](2), MaxWorkers: ptr.To[int32](2)})
	workers := e.readyWorkers(t, ns, dataset, 2, 3*time.Minute)

	start := time.Now()
	e.runJob(t, ns, burstJob("plain", dataset, "plain.bin", plain, n), n, 8*time.Minute)
	baseline := time.Since(start)
	t.Logf("baseline: %d pods verified %d MiB each through %d workers in %s", n, len(plain)>>20, len(workers), baseline.Round(time.Millisecond))

	// The injector runs beside runJob (which may t.Fatal); it never calls
	// t, and the cleanup ends it, so the worker is always continued.
	victim := workers[0]
	done := make(chan struct{})
	report := make(chan stopReport, 1)
	go func() { report <- e.stopWorkerDuringJob(ns, "faulted", dataset, victim, stopAfter, stopFor, done) }()
	var once sync.Once
	var rep stopReport
	finish := func() stopReport {
		once.Do(func() {
			close(done)
			rep = <-report
			if rep.pid > 0 {
				_ = syscall.Kill(rep.pid, syscall.SIGCONT)
			}
		})
		return rep
	}
	t.Cleanup(func() { finish() })

	start = time.Now()
	e.runJob(t, ns, burstJob("faulted", dataset, "faulted.bin", faulted, n), n, 8*time.Minute)
	took := time.Since(start)
	rep = finish()
	switch {
	case rep.err != nil:
		t.Fatalf("stopping a worker during the burst: %v", rep.err)
	case rep.pid == 0:
		t.Fatalf("the burst ended (%s) before the worker was stopped; make the file bigger", took.Round(time.Millisecond))
	}
	t.Logf("with worker %s (pid %d) stopped %s after the first pod's app started (%s into the Job) and continued %s: "+
		"%d pods verified %d MiB each in %s, %.2f× the baseline %s",
		victim.Name, rep.pid, stopAfter, rep.stoppedAt.Sub(start).Round(time.Millisecond), rep.continued,
		n, len(faulted)>>20, took.Round(time.Millisecond), took.Seconds()/baseline.Seconds(), baseline.Round(time.Millisecond))

	// Continued, it rejoins: its pod is ready again.
	ctx := context.Background()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, victim.Name, metav1.GetOptions{})
		if err == nil && podReady(p) {
			t.Logf("worker %s ready again (restarts %d)", victim.Name, restarts(p))
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("worker %s not ready within a minute of SIGCONT", victim.Name)
			break
		}
	}
}

// stopReport is what stopWorkerDuringJob did.
type stopReport struct {
	pid       int // the stopped process (0: none was stopped)
	stoppedAt time.Time
	continued string // when and why it was continued
	err       error
}

// stopWorkerDuringJob waits until an app container of job has started,
// then after stopAfter SIGSTOPs worker's `sluice cache-worker` process and
// SIGCONTs it after stopFor or once done is closed, whichever is first. It
// returns once done is closed, with the process continued.
func (e *env) stopWorkerDuringJob(ns, job, dataset string, worker corev1.Pod, stopAfter, stopFor time.Duration, done <-chan struct{}) stopReport {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-done
		cancel()
	}()
	wait := func(d time.Duration) bool {
		select {
		case <-time.After(d):
			return true
		case <-done:
			return false
		}
	}
	for {
		pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + job})
		if err == nil && slices.ContainsFunc(pods.Items, appStarted) {
			break
		}
		if !wait(250 * time.Millisecond) {
			return stopReport{}
		}
	}
	if !wait(stopAfter) {
		return stopReport{}
	}
	pid, err := workerPid(worker, ns, dataset)
	if err != nil {
		<-done
		return stopReport{err: err}
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		<-done
		return stopReport{err: fmt.Errorf("SIGSTOP %d: %w", pid, err)}
	}
	r := stopReport{pid: pid, stoppedAt: time.Now()}
	if wait(stopFor) {
		r.continued = fmt.Sprintf("after %s, while the burst ran", stopFor)
	} else {
		r.continued = fmt.Sprintf("after %s, when the burst was over", time.Since(r.stoppedAt).Round(time.Millisecond))
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		r.err = fmt.Errorf("SIGCONT %d: %w", pid, err)
	}
	<-done
	return r
}

// appStarted reports whether p's app container (not the sidecar) runs or
// has run.
func appStarted(p corev1.Pod) bool {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == "app" && (s.State.Running != nil || s.State.Terminated != nil) {
			return true
		}
	}
	return false
}

// workerPid finds the host PID of worker pod's `sluice cache-worker`
// process by scanning /proc (the test runs on the node; kubectl exec does
// not work on this cluster): a process whose command line is the cache
// worker of dataset in namespace ns and whose cgroup is the pod's.
func workerPid(worker corev1.Pod, ns, dataset string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	uid := string(worker.UID)
	var inPod, ofDataset []int
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if !slices.Contains(args, "cache-worker") || !slices.Contains(args, "--dataset="+dataset) ||
			!slices.ContainsFunc(args, func(a string) bool {
				list, ok := strings.CutPrefix(a, "--allow-namespaces=")
				return ok && slices.Contains(strings.Split(list, ","), ns)
			}) {
			continue
		}
		ofDataset = append(ofDataset, pid)
		// The pod's cgroup names its UID (with underscores under the
		// systemd cgroup driver).
		cg, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "cgroup"))
		if strings.Contains(string(cg), uid) || strings.Contains(string(cg), strings.ReplaceAll(uid, "-", "_")) {
			inPod = append(inPod, pid)
		}
	}
	switch {
	case len(inPod) == 1:
		return inPod[0], nil
	case len(inPod) > 1:
		return 0, fmt.Errorf("%d cache-worker processes in pod %s: %v", len(inPod), worker.Name, inPod)
	}
	return 0, fmt.Errorf("no cache-worker process of pod %s (uid %s) on the host; cache workers of %s/%s: %v",
		worker.Name, uid, ns, dataset, ofDataset)
}

// readyWorkers waits until want worker pods of dataset are ready and
// returns them by name.
func (e *env) readyWorkers(t *testing.T, ns, dataset string, want int, timeout time.Duration) []corev1.Pod {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(time.Second) {
		pods, err := e.cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: cachectl.LabelDataset + "=" + dataset})
		var ready []corev1.Pod
		if err == nil {
			for _, p := range pods.Items {
				if strings.HasPrefix(p.Name, cachectl.WorkersName(dataset)+"-") && podReady(&p) {
					ready = append(ready, p)
				}
			}
		}
		if len(ready) >= want {
			slices.SortFunc(ready, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
			return ready
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d workers of %s/%s ready within %s (%v)", len(ready), want, ns, dataset, timeout, err)
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}
