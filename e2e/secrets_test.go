//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-dev/sluice/internal/testutil"
)

// leakedSecrets looks for the origin's secret
// key and for any service-account token (a JWT) in what sluice leaves
// readable: every container log the kubelet kept (the CSI driver, the
// controller, the webhook, the workers, the sidecars, the copiers, the
// apps), the CSI sessions' log files, every event and every Dataset's
// status. It returns one line per finding and the log files it read.
func (e *env) leakedSecrets() (found, scanned []string) {
	needles := map[string]string{"the origin's secret key": e.origin.secret, "a token (JWT)": "eyJhbGciOi"}
	scan := func(what string, b []byte) {
		b = []byte(testutil.Readable(string(b))) // client-go hex-dumps binary bodies
		for name, s := range needles {
			if i := bytes.Index(b, []byte(s)); i >= 0 {
				lo, hi := max(0, i-80), min(len(b), i+80)
				found = append(found, fmt.Sprintf("%s holds %s: …%s…", what, name, strings.ReplaceAll(string(b[lo:hi]), s, "<HERE>")))
			}
		}
	}
	for _, root := range []string{filepath.Join(e.out, "pod-logs"), filepath.Join(e.out, "kubelet", "root", "plugins")} {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".log") {
				return nil
			}
			if b, err := os.ReadFile(p); err == nil {
				scanned = append(scanned, strings.TrimPrefix(p, e.out+"/"))
				scan(scanned[len(scanned)-1], b)
			}
			return nil
		})
	}
	if len(scanned) == 0 {
		found = append(found, "no log file found under "+e.out+": the scan saw nothing")
	}
	ctx := context.Background()
	if events, err := e.cs.CoreV1().Events("").List(ctx, metav1.ListOptions{}); err == nil {
		b, _ := json.Marshal(events)
		scan("the events", b)
	} else {
		found = append(found, "listing events: "+err.Error())
	}
	if raw, err := e.cs.RESTClient().Get().AbsPath("/apis/sluice.dev/v1alpha1/datasets").DoRaw(ctx); err == nil {
		scan("the Datasets", raw)
	} else {
		found = append(found, "listing Datasets: "+err.Error())
	}
	fmt.Printf("e2e: scanned %d log files, every event and every Dataset for secrets: %d findings\n", len(scanned), len(found))
	return found, scanned
}
