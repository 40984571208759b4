package driver

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// builtBinary builds the sluice binary once per test run (or takes
// SLUICE_BIN, which `make test` sets after building it).
var builtBinary = sync.OnceValues(func() (string, error) {
	if b := os.Getenv("SLUICE_BIN"); b != "" {
		return b, nil
	}
	bin := filepath.Join(buildDir, "sluice")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/sluice")
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", &buildError{out: string(out), err: err}
	}
	return bin, nil
})

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + "\n" + e.out }

// buildDir holds the binary built for this run; set once by TestMain.
var buildDir string

// TestMain makes the build directory and removes it after the run.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-driver-test")
	if err != nil {
		panic(err)
	}
	buildDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func sluiceBinary(t testing.TB) string {
	t.Helper()
	bin, err := builtBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// driverProc is a running `sluice csi`.
type driverProc struct {
	cmd    *exec.Cmd
	socket string
	log    string
}

// startDriver starts `sluice csi` with args plus --endpoint and waits for
// its socket to answer.
func startDriver(t testing.TB, socket string, args ...string) *driverProc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "csi.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(sluiceBinary(t), append([]string{"csi", "--endpoint", "unix://" + socket, "-v=4"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &driverProc{cmd: cmd, socket: socket, log: logPath}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("sluice csi log:\n%s", tail(string(data), 8000))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return p
		}
		select {
		case <-exited:
			data, _ := os.ReadFile(logPath)
			t.Fatalf("sluice csi exited: %s", data)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("sluice csi did not listen on %s within 30s", socket)
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// dial connects a gRPC client to a unix socket.
func dial(t testing.TB, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// startReaderProxy serves a CSI proxy in front of backend that turns every
// writer access mode in a request into its reader-only equivalent.
// csi-sanity v5 hard-codes SINGLE_NODE_WRITER in its volume capabilities;
// the driver refuses writers (sluice volumes are read-only), so without
// the proxy every lifecycle spec would fail at its first call. Everything
// else — responses, errors, codes — passes through unchanged.
func startReaderProxy(t testing.TB, backend, socket string) {
	t.Helper()
	conn := dial(t, backend)
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		full, _ := grpc.MethodFromServerStream(stream)
		svcName, method, _ := strings.Cut(strings.TrimPrefix(full, "/"), "/")
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svcName))
		if err != nil {
			return err
		}
		md := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(method))
		inType, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
		if err != nil {
			return err
		}
		outType, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
		if err != nil {
			return err
		}
		in, out := inType.New().Interface(), outType.New().Interface()
		if err := stream.RecvMsg(in); err != nil {
			return err
		}
		toReaders(in.ProtoReflect())
		if err := conn.Invoke(stream.Context(), full, in, out); err != nil {
			return err
		}
		return stream.SendMsg(out)
	}))
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
}

// toReaders rewrites writer access modes anywhere in m.
func toReaders(m protoreflect.Message) {
	if am, ok := m.Interface().(*csi.VolumeCapability_AccessMode); ok {
		switch am.Mode {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
			am.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
		case csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER, csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
			am.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		}
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				toReaders(v.List().Get(i).Message())
			}
		case fd.IsMap():
		case fd.Message() != nil:
			toReaders(v.Message())
		}
		return true
	})
}

// waitGone waits until the process pid has exited.
func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); err != nil {
			return true
		}
		if _, err := procStartTime(pid); err != nil {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func mustWrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func withTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func readFirstByte(path string, buf []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Read(buf)
	return err
}
