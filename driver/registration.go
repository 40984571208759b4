package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/sluice-dev/sluice/internal/contract"
)

// registrationServer registers the node plugin with the kubelet through
// its plugin watcher — what the node-driver-registrar sidecar does, without
// the extra image: the kubelet notices the socket
// <registration-dir>/csi.sluice.dev-reg.sock, asks GetInfo for the CSI
// endpoint and reports the outcome with NotifyRegistrationStatus. Removing
// the socket unregisters the plugin.
type registrationServer struct {
	registerapi.UnimplementedRegistrationServer
	endpoint string // the CSI socket's path as the kubelet sees it
}

func (r *registrationServer) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: contract.DriverName, Endpoint: r.endpoint,
		SupportedVersions: []string{"1.0.0"}}, nil
}

func (r *registrationServer) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if s.GetPluginRegistered() {
		klog.InfoS("Registered with the kubelet", "endpoint", r.endpoint)
	} else {
		klog.ErrorS(errors.New(s.GetError()), "The kubelet refused the plugin's registration", "endpoint", r.endpoint)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// registrationSocket is the socket the kubelet's plugin watcher looks for.
func registrationSocket(dir string) string {
	return filepath.Join(dir, contract.DriverName+"-reg.sock")
}

// serveRegistration serves the registration socket in dir until ctx is
// done, then removes it (which unregisters the plugin).
func serveRegistration(ctx context.Context, dir, kubeletEndpoint string) error {
	path := registrationSocket(dir)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale registration socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("registration socket: %w", err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registrationServer{endpoint: kubeletEndpoint})
	go func() {
		<-ctx.Done()
		srv.Stop()
		_ = os.Remove(path)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil {
			klog.ErrorS(err, "Registration server stopped")
		}
	}()
	klog.InfoS("Waiting for the kubelet to register the plugin", "socket", path, "endpoint", kubeletEndpoint)
	return nil
}
