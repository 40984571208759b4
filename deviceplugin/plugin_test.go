package deviceplugin

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/sluice-dev/sluice/internal/contract"
)

// fakeKubelet is the kubelet's Registration service on dir/kubelet.sock.
type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	srv  *grpc.Server
	regs chan *pluginapi.RegisterRequest
}

func startKubelet(t *testing.T, dir string) *fakeKubelet {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKubelet{srv: grpc.NewServer(), regs: make(chan *pluginapi.RegisterRequest, 4)}
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go k.srv.Serve(ln)
	t.Cleanup(k.srv.Stop)
	return k
}

func (k *fakeKubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.regs <- r
	return &pluginapi.Empty{}, nil
}

// restart does what a kubelet restart does: stop, remove every socket of
// the directory, and listen on a new kubelet.sock.
func (k *fakeKubelet) restart(t *testing.T, dir string) *fakeKubelet {
	k.srv.Stop()
	socks, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
	for _, s := range socks {
		os.Remove(s)
	}
	return startKubelet(t, dir)
}

func (k *fakeKubelet) registered(t *testing.T) *pluginapi.RegisterRequest {
	t.Helper()
	select {
	case r := <-k.regs:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("the plugin did not register within 5s")
	}
	return nil
}

func dialPlugin(t *testing.T, dir, endpoint string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

func TestDevicePlugin(t *testing.T) {
	dir := t.TempDir()
	kubelet := startKubelet(t, dir)
	o := &Options{Dir: dir, Devices: 8, DevicePath: "/dev/null", PollInterval: 50 * time.Millisecond}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()

	reg := kubelet.registered(t)
	if reg.Version != pluginapi.Version || reg.ResourceName != contract.FuseResource || reg.Endpoint != SocketName {
		t.Fatalf("registration %+v", reg)
	}
	client := dialPlugin(t, dir, reg.Endpoint)
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	stream, err := client.ListAndWatch(cctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	list, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Devices) != 8 {
		t.Fatalf("%d devices, want 8", len(list.Devices))
	}
	for _, d := range list.Devices {
		if d.Health != pluginapi.Healthy || !strings.HasPrefix(d.ID, "fuse-") {
			t.Errorf("device %+v", d)
		}
	}

	tests := []struct {
		name string
		ids  [][]string
		code codes.Code
	}{
		{"one container", [][]string{{"fuse-0"}}, codes.OK},
		{"two containers", [][]string{{"fuse-1"}, {"fuse-2", "fuse-3"}}, codes.OK},
		{"unknown device", [][]string{{"gpu-0"}}, codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := &pluginapi.AllocateRequest{}
			for _, ids := range tc.ids {
				req.ContainerRequests = append(req.ContainerRequests, &pluginapi.ContainerAllocateRequest{DevicesIds: ids})
			}
			resp, err := client.Allocate(cctx, req)
			if status.Code(err) != tc.code {
				t.Fatalf("Allocate: %v, want %s", err, tc.code)
			}
			if err != nil {
				return
			}
			if len(resp.ContainerResponses) != len(tc.ids) {
				t.Fatalf("%d container responses, want %d", len(resp.ContainerResponses), len(tc.ids))
			}
			for _, cr := range resp.ContainerResponses {
				if len(cr.Devices) != 1 || cr.Devices[0].ContainerPath != "/dev/fuse" || cr.Devices[0].HostPath != "/dev/null" ||
					cr.Devices[0].Permissions != "rw" {
					t.Errorf("devices %+v, want /dev/fuse rw", cr.Devices)
				}
			}
		})
	}

	// A kubelet restart: the plugin registers again and serves on a new socket.
	kubelet = kubelet.restart(t, dir)
	reg = kubelet.registered(t)
	if reg.ResourceName != contract.FuseResource {
		t.Fatalf("re-registration %+v", reg)
	}
	client = dialPlugin(t, dir, reg.Endpoint)
	if _, err := client.GetDevicePluginOptions(cctx, &pluginapi.Empty{}); err != nil {
		t.Fatalf("plugin does not serve after re-registration: %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := os.Stat(filepath.Join(dir, SocketName)); !os.IsNotExist(err) {
		t.Errorf("plugin socket left behind: %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"ok", Options{Dir: "/x", Devices: 1, DevicePath: "/dev/null", PollInterval: time.Second}, ""},
		{"relative dir", Options{Dir: "x", Devices: 1, DevicePath: "/dev/null", PollInterval: time.Second}, "not an absolute path"},
		{"no devices", Options{Dir: "/x", Devices: 0, DevicePath: "/dev/null", PollInterval: time.Second}, "--devices 0"},
		{"not a device", Options{Dir: "/x", Devices: 1, DevicePath: "/proc/version", PollInterval: time.Second}, "not a character device"},
		{"missing device", Options{Dir: "/x", Devices: 1, DevicePath: "/dev/nope", PollInterval: time.Second}, "--device"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
		})
	}
}
