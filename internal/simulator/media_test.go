package simulator

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/qemu"
)

// These tests drive the boot override and virtual media state (boot.json, media.json, the media
// cache) with real files; they need neither root nor a VM, and run with -short. The boot itself is
// TestBootFromVirtualMediaWithQEMU.

var mediaTestServer = types.NamespacedName{Namespace: "team-a", Name: "worker-1"}

// mediaTestProvider is a Provider with only what boot override and media need, and the VM
// directory of mediaTestServer made (as a repave would have).
func mediaTestProvider(t *testing.T, pol ImagePolicy) (p *Provider, vmDir string) {
	t.Helper()
	layout := Layout{WorkDir: t.TempDir()}
	p = &Provider{
		cfg:    Config{Images: pol, Log: logr.Discard()},
		media:  newMediaCache(layout.MediaDir(), pol, netip.MustParsePrefix("192.168.100.1/24")),
		layout: layout,
		locks:  map[types.NamespacedName]*sync.Mutex{},
	}
	vmDir = p.VMDir(mediaTestServer)
	if err := os.MkdirAll(vmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return p, vmDir
}

// writeTestISO writes a minimal ISO 9660 image (just its volume descriptor's identifier).
func writeTestISO(t *testing.T, path string) {
	t.Helper()
	b := make([]byte, 64<<10)
	copy(b[32768:], "\x01CD001\x01")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestBootOverrideFile(t *testing.T) {
	p, dir := mediaTestProvider(t, ImagePolicy{})
	ctx := t.Context()
	boot := func() controller.BootOverride {
		t.Helper()
		b, err := readBoot(dir)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if got := boot(); got != defaultBoot() || got.Target != "None" || got.Enabled != "Disabled" || got.Mode != "Legacy" {
		t.Errorf("nothing set: %+v, want None/Disabled/Legacy", got)
	}

	if err := p.SetBoot(ctx, mediaTestServer, controller.BootOverride{Target: controller.BootTargetCd, Enabled: controller.BootOnce}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, filenames.BootFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("boot file: %v %v, want mode 0600", fi, err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, filenames.BootFile))
	var onDisk map[string]string
	if err := json.Unmarshal(raw, &onDisk); err != nil || onDisk["target"] != "Cd" || onDisk["enabled"] != "Once" || onDisk["mode"] != "Legacy" {
		t.Errorf("boot file %s (%v)", raw, err)
	}
	// Empty fields keep their value.
	if err := p.SetBoot(ctx, mediaTestServer, controller.BootOverride{Mode: "Legacy"}); err != nil {
		t.Fatal(err)
	}
	if got := boot(); got.Target != "Cd" || got.Enabled != "Once" {
		t.Errorf("after setting only the mode: %+v", got)
	}
	if err := p.SetBoot(ctx, mediaTestServer, controller.BootOverride{Enabled: controller.BootContinuous}); err != nil {
		t.Fatal(err)
	}
	if got := boot(); got.Target != "Cd" || got.Enabled != "Continuous" {
		t.Errorf("after setting only enabled: %+v", got)
	}

	// What the simulator cannot do is refused, and changes nothing.
	for _, b := range []controller.BootOverride{
		{Target: controller.BootTargetPxe, Enabled: controller.BootOnce},
		{Mode: "UEFI"},
		{Target: "Floppy"},
		{Enabled: "Always"},
	} {
		err := p.SetBoot(ctx, mediaTestServer, b)
		if !errors.Is(err, controller.ErrUnsupported) {
			t.Errorf("SetBoot(%+v) = %v, want ErrUnsupported", b, err)
		}
	}
	if err := p.SetBoot(ctx, mediaTestServer, controller.BootOverride{Target: "Pxe"}); err == nil || !strings.Contains(err.Error(), "no PXE server") {
		t.Errorf("Pxe refused with %v, want a message saying why", err)
	}
	if got := boot(); got.Target != "Cd" || got.Enabled != "Continuous" || got.Mode != "Legacy" {
		t.Errorf("after refusals: %+v", got)
	}

	// A hand edit cannot smuggle in what SetBoot refuses.
	if err := os.WriteFile(filepath.Join(dir, filenames.BootFile), []byte(`{"target":"Pxe","enabled":"Once"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readBoot(dir); !errors.Is(err, controller.ErrUnsupported) {
		t.Errorf("boot file naming Pxe read with %v", err)
	}

	// A server that was never installed has no BMC state to set.
	never := types.NamespacedName{Namespace: "team-a", Name: "never"}
	if err := p.SetBoot(ctx, never, controller.BootOverride{Target: "Cd"}); !errors.Is(err, controller.ErrNotInstalled) {
		t.Errorf("SetBoot on a server never installed: %v, want ErrNotInstalled", err)
	}
}

func TestMediaInsertAndEject(t *testing.T) {
	images := t.TempDir()
	p, dir := mediaTestProvider(t, ImagePolicy{FileDirs: []string{images}})
	ctx := t.Context()
	iso := filepath.Join(images, "installer.iso")
	writeTestISO(t, iso)
	url := "file://" + iso

	if m, err := mediaInfo(dir); err != nil || m.Inserted {
		t.Fatalf("empty drive: %+v %v", m, err)
	}
	if err := p.InsertMedia(ctx, mediaTestServer, url); err != nil {
		t.Fatal(err)
	}
	if m, err := mediaInfo(dir); err != nil || !m.Inserted || m.Image != url {
		t.Errorf("after insert: %+v %v", m, err)
	}
	var rec mediaFile
	if ok, err := readJSON(filepath.Join(dir, filenames.MediaFile), &rec); !ok || err != nil ||
		!strings.HasPrefix(rec.Digest, "sha256:") || !strings.HasPrefix(rec.Path, p.layout.MediaDir()+"/") {
		t.Errorf("media file %+v %v", rec, err)
	}
	// The ISO is in the media cache, not in the OS image cache.
	if _, err := os.Stat(p.layout.ImagesDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the images directory was touched: %v", err)
	}

	// No override: the CD is attached and the disk boots first.
	cd, bootCD, _, err := p.bootDevices(ctx, mediaTestServer, dir)
	if err != nil || cd != rec.Path || bootCD {
		t.Errorf("no override: cd %q boot %v %v", cd, bootCD, err)
	}
	if err := p.SetBoot(ctx, mediaTestServer, controller.BootOverride{Target: "Cd", Enabled: "Once"}); err != nil {
		t.Fatal(err)
	}
	cd, bootCD, boot, err := p.bootDevices(ctx, mediaTestServer, dir)
	if err != nil || cd != rec.Path || !bootCD || boot.Enabled != "Once" {
		t.Errorf("Cd once: cd %q boot %v %+v %v", cd, bootCD, boot, err)
	}
	// The path given to QEMU comes from the cache, never from media.json.
	rec.Path = "/etc/shadow"
	if err := writeJSON(dir, filenames.MediaFile, rec); err != nil {
		t.Fatal(err)
	}
	if cd, _, _, err := p.bootDevices(ctx, mediaTestServer, dir); err != nil || cd == "/etc/shadow" {
		t.Errorf("path from media.json used: %q %v", cd, err)
	}
	// Content that is no longer cached: a CD boot fails clearly; a disk boot goes on without it.
	if err := os.RemoveAll(p.layout.MediaDir()); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := p.bootDevices(ctx, mediaTestServer, dir); err == nil || !strings.Contains(err.Error(), "insert it again") {
		t.Errorf("CD boot with the image gone: %v", err)
	}
	if err := p.SetBoot(ctx, mediaTestServer, controller.BootOverride{Target: "Hdd"}); err != nil {
		t.Fatal(err)
	}
	if cd, bootCD, _, err := p.bootDevices(ctx, mediaTestServer, dir); err != nil || cd != "" || bootCD {
		t.Errorf("disk boot with the CD's image gone: %q %v %v", cd, bootCD, err)
	}

	if err := p.EjectMedia(ctx, mediaTestServer); err != nil {
		t.Fatal(err)
	}
	if m, err := mediaInfo(dir); err != nil || m.Inserted {
		t.Errorf("after eject: %+v %v", m, err)
	}
	if err := p.EjectMedia(ctx, mediaTestServer); err != nil {
		t.Errorf("ejecting an empty drive: %v", err)
	}
	if err := p.EjectMedia(ctx, types.NamespacedName{Namespace: "x", Name: "never"}); err != nil {
		t.Errorf("ejecting on a server never installed: %v", err)
	}
	// Cd asked for, drive empty: the disk boots, as on a real machine.
	if err := p.SetBoot(ctx, mediaTestServer, controller.BootOverride{Target: "Cd"}); err != nil {
		t.Fatal(err)
	}
	if cd, bootCD, _, err := p.bootDevices(ctx, mediaTestServer, dir); err != nil || cd != "" || bootCD {
		t.Errorf("Cd with an empty drive: %q %v %v", cd, bootCD, err)
	}
	never := types.NamespacedName{Namespace: "team-a", Name: "never"}
	if err := p.InsertMedia(ctx, never, url); !errors.Is(err, controller.ErrNotInstalled) {
		t.Errorf("InsertMedia on a server never installed: %v, want ErrNotInstalled", err)
	}
}

// Everything InsertMedia refuses is a *MediaRefusedError that unwraps to ErrUnsupported and to
// the cause, says why, and leaves the drive as it was.
func TestMediaRefusals(t *testing.T) {
	images := t.TempDir()
	p, dir := mediaTestProvider(t, ImagePolicy{FileDirs: []string{images}})
	ctx := t.Context()
	write := func(name string, b []byte) string {
		path := filepath.Join(images, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return "file://" + path
	}
	qcow2 := make([]byte, 64<<10)
	copy(qcow2, "QFI\xfb\x00\x00\x00\x03")
	copy(qcow2[32769:], "CD001")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(qcow2) }))
	defer srv.Close()
	for _, tc := range []struct {
		name, url string
		cause     error
		reason    string
		says      string
	}{
		{"qcow2", write("disk.qcow2", qcow2), qemu.ErrUnsupportedMedia, "UnsupportedMedia", "qcow2 disk image"},
		{"text", write("notes.txt", []byte("hello\n")), qemu.ErrUnsupportedMedia, "UnsupportedMedia", "looks like text"},
		{"outside the image dirs", "file:///etc/passwd", imagecache.ErrNotAllowed, "ImageSourceNotAllowed", "--image-dir"},
		{"missing", "file://" + filepath.Join(images, "gone.iso"), imagecache.ErrNotFound, "ImageNotFound", "gone.iso"},
		{"loopback", srv.URL + "/cd.iso", imagecache.ErrNotAllowed, "ImageSourceNotAllowed", "--allow-image-hosts"},
		{"scheme", "ftp://example.com/cd.iso", imagecache.ErrInvalidURL, "InvalidImageURL", "unsupported scheme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.InsertMedia(ctx, mediaTestServer, tc.url)
			var refused *MediaRefusedError
			if !errors.As(err, &refused) || !errors.Is(err, controller.ErrUnsupported) || !errors.Is(err, tc.cause) {
				t.Fatalf("err = %v, want a MediaRefusedError wrapping ErrUnsupported and %v", err, tc.cause)
			}
			t.Log(err)
			if refused.Reason != tc.reason || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("reason %s, message %q; want %s saying %q", refused.Reason, err, tc.reason, tc.says)
			}
			if m, _ := mediaInfo(dir); m.Inserted {
				t.Errorf("the drive holds %s after a refusal", m.Image)
			}
		})
	}
}
