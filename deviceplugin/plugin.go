// Package deviceplugin is `sluice device-plugin`: a kubelet device plugin
// (API v1beta1) that advertises the resource sluice.dev/fuse, so that pods —
// the FUSE sidecar of the webhook's platform profiles first — get /dev/fuse
// without being privileged. /dev/fuse is shareable: the plugin advertises
// --devices identical "devices", each of which Allocate answers with the
// same DeviceSpec (/dev/fuse, rw).
//
// Life cycle: serve the DevicePlugin service on <dir>/sluice-fuse.sock,
// register with the kubelet at <dir>/kubelet.sock, then watch: a kubelet
// restart removes every socket in the directory and creates kubelet.sock
// anew, so when our socket disappears or kubelet.sock changes the plugin
// serves again and re-registers.
package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/sluice-dev/sluice/internal/contract"
)

// SocketName is the plugin's socket in the device-plugin directory.
const SocketName = "sluice-fuse.sock"

// Options are the options of `sluice device-plugin`.
type Options struct {
	Dir          string
	Devices      int
	DevicePath   string
	PollInterval time.Duration
}

// AddFlags registers the flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Dir, "plugin-dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin directory (holds kubelet.sock)")
	fs.IntVar(&o.Devices, "devices", 64, "how many pods per node may hold "+contract.FuseResource+" at once")
	fs.StringVar(&o.DevicePath, "device", "/dev/fuse", "the device given to containers (read-write)")
	fs.DurationVar(&o.PollInterval, "poll-interval", time.Second, "how often the kubelet socket is checked for a kubelet restart")
}

// Validate checks the flags.
func (o *Options) Validate() error {
	if !filepath.IsAbs(o.Dir) {
		return fmt.Errorf("--plugin-dir %q is not an absolute path", o.Dir)
	}
	if o.Devices < 1 || o.Devices > 100000 {
		return fmt.Errorf("--devices %d: want 1..100000", o.Devices)
	}
	if o.PollInterval <= 0 {
		return fmt.Errorf("--poll-interval %s: must be positive", o.PollInterval)
	}
	fi, err := os.Stat(o.DevicePath)
	if err != nil {
		return fmt.Errorf("--device: %w", err)
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fmt.Errorf("--device %s is not a character device", o.DevicePath)
	}
	return nil
}

// deviceIDs returns the advertised device IDs.
func deviceIDs(n int) []*pluginapi.Device {
	out := make([]*pluginapi.Device, n)
	for i := range out {
		out[i] = &pluginapi.Device{ID: "fuse-" + strconv.Itoa(i), Health: pluginapi.Healthy}
	}
	return out
}

// Run serves and registers until ctx is done, re-registering after every
// kubelet restart.
func (o *Options) Run(ctx context.Context) error {
	kubeletSock := filepath.Join(o.Dir, filepath.Base(pluginapi.KubeletSocket))
	sock := filepath.Join(o.Dir, SocketName)
	for {
		p := &plugin{devices: deviceIDs(o.Devices), devicePath: o.DevicePath}
		srv, err := p.serve(sock)
		if err != nil {
			return err
		}
		kubelet, err := waitForKubelet(ctx, kubeletSock, o.PollInterval)
		if err != nil {
			srv.Stop()
			_ = os.Remove(sock)
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := register(ctx, kubeletSock); err != nil {
			klog.ErrorS(err, "Registration with the kubelet failed; retrying", "socket", kubeletSock)
			srv.Stop()
			if err := sleep(ctx, o.PollInterval); err != nil {
				return nil
			}
			continue
		}
		klog.InfoS("Registered with the kubelet", "resource", contract.FuseResource, "devices", o.Devices, "endpoint", sock)
		reason := watch(ctx, sock, kubeletSock, kubelet, o.PollInterval)
		srv.Stop()
		if reason == "" {
			_ = os.Remove(sock)
			return nil
		}
		klog.InfoS("Registering again", "reason", reason)
	}
}

// waitForKubelet waits for kubelet.sock and returns its identity.
func waitForKubelet(ctx context.Context, path string, every time.Duration) (os.FileInfo, error) {
	for {
		fi, err := os.Stat(path)
		if err == nil {
			return fi, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("kubelet socket: %w", err)
		}
		klog.V(2).InfoS("Waiting for the kubelet socket", "path", path)
		if err := sleep(ctx, every); err != nil {
			return nil, err
		}
	}
}

// watch returns why the plugin must register again ("" when ctx is done):
// its own socket was removed, or kubelet.sock was created anew.
func watch(ctx context.Context, sock, kubeletSock string, kubelet os.FileInfo, every time.Duration) string {
	for {
		if sleep(ctx, every) != nil {
			return ""
		}
		if _, err := os.Stat(sock); err != nil {
			return "the plugin socket was removed (kubelet restart)"
		}
		fi, err := os.Stat(kubeletSock)
		if err != nil {
			continue // the kubelet is restarting; wait for its new socket
		}
		if !os.SameFile(fi, kubelet) {
			return "kubelet.sock was created anew (kubelet restart)"
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
