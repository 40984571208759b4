package driver

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/sluice-dev/sluice/internal/contract"
)

// serveInProcess serves svc over an in-memory connection, through the
// same interceptor (logging, error mapping) as the real server.
func serveInProcess(t testing.TB, svc services) *grpc.ClientConn {
	t.Helper()
	ln := bufconn.Listen(1 << 20)
	srv := newGRPCServer(svc)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func capability(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	}
}

var (
	readerMany = capability(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
	readerOne  = capability(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)
)

// wantCode checks err's gRPC code and that its message names want.
func wantCode(t *testing.T, err error, code codes.Code, want string) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Fatalf("code %v, want %v (err: %v)", got, code, err)
	}
	if want != "" && !strings.Contains(status.Convert(err).Message(), want) {
		t.Errorf("message %q does not say %q", status.Convert(err).Message(), want)
	}
}

func TestIdentity(t *testing.T) {
	for _, controller := range []bool{true, false} {
		c := csi.NewIdentityClient(serveInProcess(t, services{identity: &identityServer{controller: controller}}))
		info, err := c.GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
		if err != nil || info.GetName() != contract.DriverName || info.GetVendorVersion() == "" {
			t.Fatalf("GetPluginInfo = %v, %v", info, err)
		}
		caps, err := c.GetPluginCapabilities(context.Background(), &csi.GetPluginCapabilitiesRequest{})
		if err != nil || (len(caps.GetCapabilities()) == 1) != controller {
			t.Fatalf("controller=%v: GetPluginCapabilities = %v, %v", controller, caps, err)
		}
		if p, err := c.Probe(context.Background(), &csi.ProbeRequest{}); err != nil || !p.GetReady().GetValue() {
			t.Fatalf("Probe = %v, %v", p, err)
		}
	}
}

func TestCreateVolume(t *testing.T) {
	src := map[string]string{"source": "s3://bucket/prefix?endpoint=http://127.0.0.1:9000"}
	tests := []struct {
		name     string
		req      *csi.CreateVolumeRequest
		wantCode codes.Code
		wantMsg  string
		wantCtx  map[string]string
	}{
		{"s3 source", &csi.CreateVolumeRequest{Name: "v1", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: src}, codes.OK, "", src},
		{"file source with every option and k8s keys", &csi.CreateVolumeRequest{Name: "v2",
			VolumeCapabilities: []*csi.VolumeCapability{readerOne},
			Parameters: map[string]string{"source": "file:///srv/data", "subPath": "/models/", "cacheSize": "20Gi",
				"readahead": "16", "csi.storage.k8s.io/pvc/name": "p", "csi.storage.k8s.io/pv/name": "v2"}},
			codes.OK, "", map[string]string{"source": "file:///srv/data", "subPath": "models", "cacheSize": "20Gi", "readahead": "16"}},
		{"https source", &csi.CreateVolumeRequest{Name: "v3", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "https://example.com/w.bin"}}, codes.OK, "", nil},
		{"no name", &csi.CreateVolumeRequest{VolumeCapabilities: []*csi.VolumeCapability{readerMany}, Parameters: src},
			codes.InvalidArgument, "name missing", nil},
		{"no capabilities", &csi.CreateVolumeRequest{Name: "x", Parameters: src}, codes.InvalidArgument, "capabilities missing", nil},
		{"writer", &csi.CreateVolumeRequest{Name: "x", Parameters: src, VolumeCapabilities: []*csi.VolumeCapability{
			readerMany, capability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}}, codes.InvalidArgument, "read-only", nil},
		{"multi writer", &csi.CreateVolumeRequest{Name: "x", Parameters: src, VolumeCapabilities: []*csi.VolumeCapability{
			capability(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}}, codes.InvalidArgument, "MULTI_NODE_MULTI_WRITER", nil},
		{"no access mode", &csi.CreateVolumeRequest{Name: "x", Parameters: src, VolumeCapabilities: []*csi.VolumeCapability{
			capability(csi.VolumeCapability_AccessMode_UNKNOWN)}}, codes.InvalidArgument, "access mode", nil},
		{"block", &csi.CreateVolumeRequest{Name: "x", Parameters: src, VolumeCapabilities: []*csi.VolumeCapability{{
			AccessMode: readerMany.AccessMode, AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}}},
			codes.InvalidArgument, "block", nil},
		{"no source", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany}},
			codes.InvalidArgument, `"source"`, nil},
		{"dataset without API access", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"dataset": "ml/imagenet"}}, codes.FailedPrecondition, "no Kubernetes API access", nil},
		{"source and dataset", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"dataset": "d", "source": "file:///x"}}, codes.InvalidArgument, "not both", nil},
		{"unknown key", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "file:///x", "sorce": "y"}}, codes.InvalidArgument, `unknown volume attribute(s) ["sorce"]`, nil},
		{"unknown scheme", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "ftp://host/x"}}, codes.InvalidArgument, `unknown scheme "ftp"`, nil},
		{"relative file", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "file://relative/x"}}, codes.InvalidArgument, "absolute path", nil},
		{"s3 without bucket", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "s3://"}}, codes.InvalidArgument, "bucket", nil},
		{"s3 bad query", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "s3://bkt/p?color=red"}}, codes.InvalidArgument, "color", nil},
		{"s3 with credentials in URL", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "s3://AK:SK@bkt/p"}}, codes.InvalidArgument, "credentials", nil},
		{"subPath escapes", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "file:///x", "subPath": "a/../../etc"}}, codes.InvalidArgument, "subPath", nil},
		{"bad cacheSize", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "file:///x", "cacheSize": "lots"}}, codes.InvalidArgument, "cacheSize", nil},
		{"tiny cacheSize", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "file:///x", "cacheSize": "1Ki"}}, codes.InvalidArgument, "at least 1Mi", nil},
		{"bad readahead", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": "file:///x", "readahead": "-1"}}, codes.InvalidArgument, "readahead", nil},
		{"capacity range inverted", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: src, CapacityRange: &csi.CapacityRange{RequiredBytes: 10, LimitBytes: 5}}, codes.InvalidArgument, "capacity", nil},
		{"snapshot source", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: src, VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "s"}}}}, codes.InvalidArgument, "content source", nil},
	}
	cs, err := newControllerServer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := csi.NewControllerClient(serveInProcess(t, services{identity: &identityServer{}, controller: cs}))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.CreateVolume(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode, tc.wantMsg)
			if err != nil {
				return
			}
			if resp.GetVolume().GetVolumeId() == "" {
				t.Fatal("empty volume id")
			}
			if tc.wantCtx != nil {
				for k, v := range tc.wantCtx {
					if got := resp.GetVolume().GetVolumeContext()[k]; got != v {
						t.Errorf("volume context %s = %q, want %q", k, got, v)
					}
				}
				if len(resp.GetVolume().GetVolumeContext()) != len(tc.wantCtx) {
					t.Errorf("volume context %v, want %v", resp.GetVolume().GetVolumeContext(), tc.wantCtx)
				}
			}
		})
	}
}

func TestCreateVolumeIdempotence(t *testing.T) {
	state := t.TempDir()
	cs, err := newControllerServer(state)
	if err != nil {
		t.Fatal(err)
	}
	c := csi.NewControllerClient(serveInProcess(t, services{identity: &identityServer{}, controller: cs}))
	ctx := context.Background()
	req := func(src string, size int64) *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: "pvc-1", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
			Parameters: map[string]string{"source": src}, CapacityRange: &csi.CapacityRange{RequiredBytes: size}}
	}
	first, err := c.CreateVolume(ctx, req("file:///a", 1<<30))
	if err != nil {
		t.Fatal(err)
	}
	if first.GetVolume().GetCapacityBytes() != 1<<30 {
		t.Errorf("capacity %d, want the requested 1Gi (informational)", first.GetVolume().GetCapacityBytes())
	}
	again, err := c.CreateVolume(ctx, req("file:///a", 1<<30))
	if err != nil || again.GetVolume().GetVolumeId() != first.GetVolume().GetVolumeId() {
		t.Fatalf("repeat: %v, %v", again, err)
	}
	_, err = c.CreateVolume(ctx, req("file:///b", 1<<30))
	wantCode(t, err, codes.AlreadyExists, "pvc-1")
	_, err = c.CreateVolume(ctx, req("file:///a", 2<<30))
	wantCode(t, err, codes.AlreadyExists, "pvc-1")

	// A restarted controller remembers the volume (state directory).
	cs2, err := newControllerServer(state)
	if err != nil {
		t.Fatal(err)
	}
	c2 := csi.NewControllerClient(serveInProcess(t, services{identity: &identityServer{}, controller: cs2}))
	_, err = c2.CreateVolume(ctx, req("file:///b", 1<<30))
	wantCode(t, err, codes.AlreadyExists, "")
	id := first.GetVolume().GetVolumeId()
	if _, err := c2.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id,
		VolumeCapabilities: []*csi.VolumeCapability{readerMany}}); err != nil {
		t.Fatal(err)
	}

	// DeleteVolume is idempotent; afterwards the name is free again.
	for i := 0; i < 2; i++ {
		if _, err := c2.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("DeleteVolume #%d: %v", i+1, err)
		}
	}
	if _, err := c2.CreateVolume(ctx, req("file:///b", 1<<30)); err != nil {
		t.Fatalf("re-create after delete: %v", err)
	}
	// A name longer than an id may be gets a hashed id.
	long := strings.Repeat("n", 200)
	r := req("file:///a", 0)
	r.Name = long
	resp, err := c2.CreateVolume(ctx, r)
	if err != nil || len(resp.GetVolume().GetVolumeId()) > maxVolumeIDLen {
		t.Fatalf("long name: %v, %v", resp, err)
	}
}

func TestControllerOtherRPCs(t *testing.T) {
	cs, _ := newControllerServer("")
	c := csi.NewControllerClient(serveInProcess(t, services{identity: &identityServer{}, controller: cs}))
	ctx := context.Background()
	vol, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{readerMany},
		Parameters: map[string]string{"source": "file:///data"}})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	writer := capability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	tests := []struct {
		name      string
		req       *csi.ValidateVolumeCapabilitiesRequest
		wantCode  codes.Code
		confirmed bool
	}{
		{"readers", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{readerMany, readerOne}}, codes.OK, true},
		{"writer", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{writer}}, codes.OK, false},
		{"unknown volume", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "nope", VolumeCapabilities: []*csi.VolumeCapability{readerMany}}, codes.NotFound, false},
		{"no id", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{readerMany}}, codes.InvalidArgument, false},
		{"no capabilities", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id}, codes.InvalidArgument, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.ValidateVolumeCapabilities(ctx, tc.req)
			wantCode(t, err, tc.wantCode, "")
			if err == nil && (resp.GetConfirmed() != nil) != tc.confirmed {
				t.Errorf("confirmed = %v, want %v (message %q)", resp.GetConfirmed(), tc.confirmed, resp.GetMessage())
			}
		})
	}
	_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{})
	wantCode(t, err, codes.InvalidArgument, "volume id")
	caps, err := c.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil || len(caps.GetCapabilities()) != 1 ||
		caps.GetCapabilities()[0].GetRpc().GetType() != csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME {
		t.Fatalf("ControllerGetCapabilities = %v, %v", caps, err)
	}
	_, err = c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.Unimplemented, "")
}
