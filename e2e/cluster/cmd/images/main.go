// Command images writes the e2e cluster's OCI image tarballs — the pause
// sandbox, a busybox tool image and the sluice image — for
// `ctr images import`: no registry is reachable here, so images are built
// from local files (go-containerregistry: empty image + layers + config).
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type file struct {
	path, src, link string // src: a local file to copy; link: a symlink target
	mode            int64
}

func main() {
	out := flag.String("out", "_output/e2e/images", "directory for the image tarballs")
	pause := flag.String("pause", "", "static pause binary")
	busybox := flag.String("busybox", "/bin/busybox", "static busybox binary")
	sluice := flag.String("sluice", "", "static sluice binary")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	images := map[string][]file{
		"sluice.local/pause:e2e": {{path: "pause", src: *pause, mode: 0o755}},
		// k8s.io/mount-utils (the CSI node plugin's bind mounts) runs
		// mount and umount: busybox's, as the only other files.
		"sluice.local/sluice:e2e": {{path: "usr/local/bin/sluice", src: *sluice, mode: 0o755}, {path: "tmp/", mode: 0o1777},
			{path: "bin/busybox", src: *busybox, mode: 0o755}, {path: "bin/mount", link: "busybox"}, {path: "bin/umount", link: "busybox"}},
		"sluice.local/busybox:e2e": busyboxFiles(*busybox),
	}
	entry := map[string][]string{"sluice.local/pause:e2e": {"/pause"}, "sluice.local/sluice:e2e": {"/usr/local/bin/sluice"},
		"sluice.local/busybox:e2e": {"/bin/sh"}}
	for ref, files := range images {
		path := filepath.Join(*out, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
		if err := write(ref, files, entry[ref], path); err != nil {
			fail(fmt.Errorf("%s: %w", ref, err))
		}
		fmt.Println(path)
	}
}

// busyboxFiles is /bin/busybox and a link per applet.
func busyboxFiles(bin string) []file {
	files := []file{{path: "bin/busybox", src: bin, mode: 0o755}, {path: "tmp/", mode: 0o1777}}
	out, err := exec.Command(bin, "--list").Output()
	if err != nil {
		fail(fmt.Errorf("busybox --list: %w", err))
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			files = append(files, file{path: "bin/" + applet, link: "busybox"})
		}
	}
	return files
}

func write(ref string, files []file, entrypoint []string, path string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(strings.TrimSuffix(f.path, "/")); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return err
			}
		}
		switch {
		case strings.HasSuffix(f.path, "/"):
			err := tw.WriteHeader(&tar.Header{Name: f.path, Typeflag: tar.TypeDir, Mode: f.mode})
			if err != nil {
				return err
			}
		case f.link != "":
			if err := tw.WriteHeader(&tar.Header{Name: f.path, Typeflag: tar.TypeSymlink, Linkname: f.link, Mode: 0o777}); err != nil {
				return err
			}
		default:
			data, err := os.ReadFile(f.src)
			if err != nil {
				return err
			}
			if err := tw.WriteHeader(&tar.Header{Name: f.path, Mode: f.mode, Size: int64(len(data))}); err != nil {
				return err
			}
			if _, err := tw.Write(data); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile() // keeps the rootfs diff IDs of the layer
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Config = v1.Config{Entrypoint: entrypoint, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, img)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "images:", err)
	os.Exit(1)
}
