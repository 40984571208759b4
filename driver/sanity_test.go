package driver

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// csiSanityBinary finds csi-sanity v5.6.0 (SLUICE_CSI_SANITY, else
// <repo>/bin/csi-sanity from `make tools`). Missing, the test is skipped —
// in CI it fails.
func csiSanityBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("SLUICE_CSI_SANITY"), filepath.Join(repoRoot(), "bin", "csi-sanity")} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("csi-sanity not found (run `make tools`); CI must run this test")
	}
	t.Skip("csi-sanity not found; run `make tools` (installs bin/csi-sanity v5.6.0)")
	return ""
}

// runSanity runs csi-sanity against a real `sluice csi --mode all` whose
// volumes are created with params (and staged with secrets, if any), and
// reports the spec counts.
func runSanity(t *testing.T, params map[string]string, secrets map[string]string) {
	sanity := csiSanityBinary(t)
	testutil.RequireRootFUSE(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "csi.sock")
	drv := startDriver(t, sock, "--mode", "all", "--node-id", "sanity-node", "--registration-dir", dir,
		"--state-dir", filepath.Join(dir, "state"), "--cache-dir", filepath.Join(dir, "cache"))
	// The process registers itself with the kubelet's plugin watcher.
	info, err := registerapi.NewRegistrationClient(dial(t, registrationSocket(dir))).GetInfo(withTimeout(t, 10*time.Second),
		&registerapi.InfoRequest{})
	if err != nil || info.GetEndpoint() != sock {
		t.Fatalf("registration GetInfo = %v, %v; want endpoint %s", info, err, sock)
	}
	proxy := filepath.Join(dir, "proxy.sock")
	startReaderProxy(t, sock, proxy)

	paramsFile := filepath.Join(dir, "params.yaml")
	mustWrite(t, paramsFile, []byte(yamlMap(params)))
	args := []string{
		"-csi.endpoint", "unix://" + proxy,
		"-csi.stagingdir", filepath.Join(dir, "staging"),
		"-csi.mountdir", filepath.Join(dir, "mount"),
		"-csi.testvolumeparameters", paramsFile,
		"-ginkgo.no-color",
		"-ginkgo.timeout", "20m",
	}
	if len(secrets) > 0 {
		secretsFile := filepath.Join(dir, "secrets.yaml")
		var b strings.Builder
		for _, k := range []string{"NodeStageVolumeSecret", "NodePublishVolumeSecret"} {
			fmt.Fprintf(&b, "%s:\n", k)
			for sk, sv := range secrets {
				fmt.Fprintf(&b, "  %s: %q\n", sk, sv)
			}
		}
		mustWrite(t, secretsFile, []byte(b.String()))
		args = append(args, "-csi.secrets", secretsFile)
	}
	cmd := exec.Command(sanity, args...)
	out, err := cmd.CombinedOutput()
	summary := regexp.MustCompile(`(?m)^.*Ran \d+ of \d+ Specs.*$|^.*\d+ Passed \| \d+ Failed.*$`).FindAllString(string(out), -1)
	t.Logf("csi-sanity (%v): %s", params, strings.Join(summary, " — "))
	if err != nil {
		t.Fatalf("csi-sanity failed: %v\n%s", err, tail(string(out), 20000))
	}
	logData, _ := os.ReadFile(drv.log)
	served := strings.Count(string(logData), "Serving session")
	t.Logf("FUSE sessions served during csi-sanity: %d", served)
	if served == 0 {
		t.Error("csi-sanity staged no volume through a real FUSE session")
	}
	for _, v := range secrets {
		if strings.Contains(string(logData), v) {
			t.Error("a secret appears in the driver's log")
		}
	}
	// Nothing of the driver's may be left behind: no session, no mount.
	left, _ := filepath.Glob(filepath.Join(dir, "state", "sessions", "*"))
	if len(left) > 0 {
		t.Errorf("sessions left after csi-sanity: %v", left)
	}
	if mounts := mountsUnder(t, dir); len(mounts) > 0 {
		t.Errorf("mounts left after csi-sanity: %v", mounts)
	}
}

func yamlMap(m map[string]string) string {
	var b strings.Builder
	for k, v := range m {
		fmt.Fprintf(&b, "%s: %q\n", k, v)
	}
	return b.String()
}

// mountsUnder lists the mount points below dir.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

func TestSanityFileSource(t *testing.T) {
	data := t.TempDir()
	mustWrite(t, filepath.Join(data, "a.txt"), []byte("hello"))
	mustWrite(t, filepath.Join(data, "sub", "b.bin"), make([]byte, 1<<20))
	runSanity(t, map[string]string{"source": "file://" + data}, nil)
}

func TestSanityS3Source(t *testing.T) {
	testutil.RequireRootFUSE(t)
	csiSanityBinary(t)
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	srv.Put(t, "data", "models/a.txt", []byte("hello"))
	srv.Put(t, "data", "models/sub/b.bin", make([]byte, 1<<20))
	runSanity(t, map[string]string{
		"source": "s3://data/models?endpoint=" + srv.Endpoint + "&pathStyle=true&region=us-east-1",
	}, map[string]string{secretAccessKeyID: srv.AccessKey, secretSecretAccessKey: srv.SecretKey})
}
