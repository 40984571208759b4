package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// services are the CSI services one process serves.
type services struct {
	identity   *identityServer
	controller *controllerServer // nil in node mode
	node       *nodeServer       // nil in controller mode
}

// newGRPCServer registers the services on a gRPC server whose interceptor
// logs every call (secrets stripped) and maps errors to gRPC codes.
func newGRPCServer(svc services) *grpc.Server {
	srv := grpc.NewServer(grpc.UnaryInterceptor(logAndMap))
	csi.RegisterIdentityServer(srv, svc.identity)
	if svc.controller != nil {
		csi.RegisterControllerServer(srv, svc.controller)
	}
	if svc.node != nil {
		csi.RegisterNodeServer(srv, svc.node)
	}
	return srv
}

// logAndMap logs each call as `klog.V(4).InfoS("NodeStageVolume: called",
// "args", …)` with secrets stripped, and turns errors into gRPC status
// errors through toStatus (errors.go).
func logAndMap(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	klog.V(4).InfoS(method+": called", "args", protosanitizer.StripSecrets(req))
	resp, err := handler(ctx, req)
	if err != nil {
		err = toStatus(err)
		klog.ErrorS(err, method+": failed")
		return nil, err
	}
	klog.V(5).InfoS(method+": done", "response", protosanitizer.StripSecrets(resp))
	return resp, nil
}

// listen opens the unix socket of endpoint (unix:///abs/path or
// /abs/path), replacing a stale socket file.
func listen(endpoint string) (net.Listener, string, error) {
	path := endpoint
	if strings.Contains(endpoint, "://") {
		u, err := url.Parse(endpoint)
		if err != nil || u.Scheme != "unix" {
			return nil, "", fmt.Errorf("--endpoint %q: want unix:///path/csi.sock", endpoint)
		}
		path = u.Path
		if u.Host != "" {
			path = u.Host + u.Path // unix://relative/path: tolerated as written
		}
	}
	if !filepath.IsAbs(path) {
		return nil, "", fmt.Errorf("--endpoint %q: want an absolute socket path", endpoint)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, "", err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, "", fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, "", fmt.Errorf("listening on %s: %w", path, err)
	}
	return ln, path, nil
}

// serve runs srv on ln until ctx is done, then stops it gracefully.
func serve(ctx context.Context, srv *grpc.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	srv.GracefulStop()
	return nil
}
