// Package kubeapi starts a real control plane for tests: etcd (Debian's
// etcd-server) and a kube-apiserver built from k8s.io/kubernetes in the
// separate module e2e/cluster (`make kube-binaries`). Nothing is faked: the
// tests talk to a real API server over HTTPS with an admin token.
//
// Binaries are looked up in SLUICE_ETCD / SLUICE_KUBE_APISERVER, then
// /usr/bin/etcd and <repo>/bin/k8s-*/kube-apiserver. When they are missing
// the test is skipped, except when CI is set: then it fails.
package kubeapi

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/sluice-dev/sluice/internal/testutil"
)

// Server is a running etcd + kube-apiserver pair.
type Server struct {
	// Config reaches the API server as a cluster admin.
	Config *rest.Config
	// Host is https://ADDR:PORT.
	Host string
}

const adminToken = "sluice-test-admin-token"

// Start starts etcd and kube-apiserver on free loopback ports for one test
// (or package, via TestMain-style reuse) and stops both at cleanup, the API
// server first.
func Start(t testing.TB) *Server {
	t.Helper()
	etcdBin, apiBin := binaries(t)
	dir := t.TempDir()
	clientPort, peerPort, apiPort := freePort(t), freePort(t), freePort(t)
	etcd := launch(t, "etcd", etcdBin, dir,
		"--name", "test", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:"+clientPort, "--advertise-client-urls", "http://127.0.0.1:"+clientPort,
		"--listen-peer-urls", "http://127.0.0.1:"+peerPort, "--initial-advertise-peer-urls", "http://127.0.0.1:"+peerPort,
		"--initial-cluster", "test=http://127.0.0.1:"+peerPort, "--log-level", "warn")
	saKey := filepath.Join(dir, "sa.key")
	writeRSAKey(t, saKey)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(adminToken+",admin,admin,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	api := launch(t, "kube-apiserver", apiBin, dir,
		"--etcd-servers", "http://127.0.0.1:"+clientPort,
		"--bind-address", "127.0.0.1", "--secure-port", apiPort, "--advertise-address", advertiseAddress(t),
		"--cert-dir", filepath.Join(dir, "certs"), "--token-auth-file", tokens,
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", "10.96.0.0/24", "--authorization-mode", "RBAC",
		"--enable-priority-and-fairness=false", "--allow-privileged=true")
	t.Cleanup(func() { api.stop(); etcd.stop() })
	s := &Server{Host: "https://127.0.0.1:" + apiPort}
	s.Config = &rest.Config{Host: s.Host, BearerToken: adminToken, TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS: 200, Burst: 400}
	if err := waitReady(s.Host, 60*time.Second, api); err != nil {
		t.Fatalf("kube-apiserver: %v\netcd output:\n%s\napiserver output:\n%s", err, etcd.output(), api.output())
	}
	return s
}

func binaries(t testing.TB) (etcd, api string) {
	etcd = os.Getenv("SLUICE_ETCD")
	if etcd == "" {
		etcd = "/usr/bin/etcd"
	}
	api = os.Getenv("SLUICE_KUBE_APISERVER")
	if api == "" {
		if root, err := repoRoot(); err == nil {
			if m, _ := filepath.Glob(filepath.Join(root, "bin", "k8s-*", "kube-apiserver")); len(m) > 0 {
				api = m[len(m)-1]
			}
		}
	}
	for _, b := range []string{etcd, api} {
		if _, err := os.Stat(b); b == "" || err != nil {
			msg := "needs etcd and kube-apiserver (make kube-binaries; apt-get install etcd-server)"
			if os.Getenv("CI") != "" {
				t.Fatal(msg + "; CI must run this test")
			}
			t.Skip(msg)
		}
	}
	return etcd, api
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "bin")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}

// advertiseAddress is a non-loopback IPv4 address of this machine (the API
// server refuses a loopback one); 127.0.0.1 if there is none.
func advertiseAddress(t testing.TB) string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
				return ipn.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

func freePort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func writeRSAKey(t testing.TB, path string) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
}

func waitReady(host string, timeout time.Duration, api *proc) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if api.exited() {
			return fmt.Errorf("exited early")
		}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, host+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not ready within %s", timeout)
}

// proc is a child process with its output kept for failure messages.
type proc struct {
	cmd  *exec.Cmd
	out  *testutil.SyncBuffer
	done chan struct{}
}

func launch(t testing.TB, name, bin, dir string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), out: &testutil.SyncBuffer{}, done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) output() string { return p.out.String() }

// stop sends SIGTERM and waits (10 s), then kills.
func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// PodToken creates namespace ns, its default service account and a pod
// called name (none of them are run: there is no kubelet), and returns a
// token bound to that pod for audience, as a projected volume would hold.
func (s *Server) PodToken(t testing.TB, ns, name, audience string) (token, uid string) {
	t.Helper()
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(s.Config)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		pod, err = cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}}}, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	expiry := int64(600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "default", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{audience}, ExpirationSeconds: &expiry,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token, string(pod.UID)
}

// WriteKubeconfig writes a kubeconfig for the admin (for kubectl and the
// Kubernetes binaries) and returns its path.
func (s *Server) WriteKubeconfig(t testing.TB) string {
	t.Helper()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: t, user: {token: %q}}]
contexts: [{name: t, context: {cluster: t, user: t}}]
current-context: t
`, s.Host, adminToken)
	if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return kc
}

// StartControllerManager runs kube-controller-manager (from the same build
// as the API server) with just the named controllers, e.g.
// "garbagecollector", "statefulset", and stops it at cleanup. Without a
// kubelet, pods are created but never run.
func (s *Server) StartControllerManager(t testing.TB, controllers ...string) {
	t.Helper()
	_, api := binaries(t)
	bin := filepath.Join(filepath.Dir(api), "kube-controller-manager")
	if env := os.Getenv("SLUICE_KUBE_CONTROLLER_MANAGER"); env != "" {
		bin = env
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kube-controller-manager next to kube-apiserver (make kube-binaries): %v", err)
	}
	dir := t.TempDir()
	kc := s.WriteKubeconfig(t)
	cm := launch(t, "kube-controller-manager", bin, dir, "--kubeconfig", kc, "--leader-elect=false",
		"--secure-port=0", "--controllers", strings.Join(controllers, ","))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-controller-manager output (last 4 KiB):\n%s", tail(cm.output(), 4096))
		}
		cm.stop()
	})
	time.Sleep(100 * time.Millisecond)
	if cm.exited() {
		t.Fatalf("kube-controller-manager exited:\n%s", cm.output())
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
