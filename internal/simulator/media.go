package simulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/qemu"
)

// A server's BMC state lives in its VM directory, next to the machine it describes, so that it
// survives controller restarts and goes with the server on Release: filenames.BootFile holds the
// boot override, filenames.MediaFile the virtual CD. Both take effect at the next power-on
// (PowerOn): QEMU's hardware is fixed when it starts, so a CD inserted into a running VM is
// attached when it next boots, as is a changed override — no hot-plug.

// Boot modes, as Redfish names them. The simulator's VMs boot SeaBIOS, so only Legacy is offered.
const (
	bootModeLegacy = "Legacy"
	bootModeUEFI   = "UEFI"
)

// MediaFetchTimeout bounds how long InsertMedia waits for a virtual CD's download, whatever the
// caller's context allows: a BMC request must end, and a slow download is cancelled rather than
// left to run for nobody (insert again to retry; a finished download is cached).
const MediaFetchTimeout = 5 * time.Minute

// MediaRefusedError is InsertMedia's answer to an image this host will not attach: an invalid
// URL, a source its policy refuses, an image that does not exist or is too large, or a file that
// is not an ISO. The caller's request is what must change, so it unwraps to
// controller.ErrUnsupported (a Redfish layer answers 400 with Error's text) and to the cause
// (imagecache.ErrInvalidURL, ErrNotAllowed, ErrNotFound, ErrTooLarge, qemu.ErrUnsupportedMedia).
type MediaRefusedError struct {
	// Reason is a short CamelCase reason, e.g. for an Event: InvalidImageURL,
	// ImageSourceNotAllowed, ImageNotFound, ImageTooLarge or UnsupportedMedia.
	Reason string
	// Err is the cause; hint says what fixes it when the fix is the host operator's.
	Err  error
	hint string
}

func (e *MediaRefusedError) Error() string {
	return "virtual media refused: " + e.Err.Error() + e.hint
}

// Unwrap returns controller.ErrUnsupported and the cause.
func (e *MediaRefusedError) Unwrap() []error { return []error{controller.ErrUnsupported, e.Err} }

// bootFile is the JSON of filenames.BootFile (its own type: the file's format must not change
// with controller.BootOverride's Go fields).
type bootFile struct {
	Target  string `json:"target"`
	Enabled string `json:"enabled"`
	Mode    string `json:"mode"`
}

// mediaFile is the JSON of filenames.MediaFile.
type mediaFile struct {
	// Image is the URL the CD was inserted from.
	Image string `json:"image"`
	// Digest ("sha256:...") pins the content inserted: a power-on attaches exactly that, or fails.
	Digest string `json:"digest"`
	// Path is where the cache held it, for people; a power-on looks the image up again by Image
	// and Digest instead of trusting a path read from disk.
	Path string `json:"path"`
}

// defaultBoot is the boot override of a server nobody set one for: none, boot the disk.
func defaultBoot() controller.BootOverride {
	return controller.BootOverride{Target: controller.BootTargetNone, Enabled: controller.BootDisabled, Mode: bootModeLegacy}
}

// checkBoot refuses the override values the simulator cannot honour, and unknown ones. Empty
// fields are fine: they keep the value set before.
func checkBoot(b controller.BootOverride) error {
	switch b.Target {
	case "", controller.BootTargetNone, controller.BootTargetHdd, controller.BootTargetCd:
	case controller.BootTargetPxe:
		return fmt.Errorf("boot target Pxe: the simulator has no PXE server; insert the image as virtual media and boot from Cd: %w", controller.ErrUnsupported)
	default:
		return fmt.Errorf("unknown boot target %q (want None, Hdd or Cd): %w", b.Target, controller.ErrUnsupported)
	}
	switch b.Enabled {
	case "", controller.BootDisabled, controller.BootOnce, controller.BootContinuous:
	default:
		return fmt.Errorf("unknown boot override setting %q (want Disabled, Once or Continuous): %w", b.Enabled, controller.ErrUnsupported)
	}
	switch b.Mode {
	case "", bootModeLegacy:
	case bootModeUEFI:
		return fmt.Errorf("boot mode UEFI: the simulator's VMs have BIOS firmware (SeaBIOS) only; use Legacy: %w", controller.ErrUnsupported)
	default:
		return fmt.Errorf("unknown boot mode %q (want Legacy): %w", b.Mode, controller.ErrUnsupported)
	}
	return nil
}

// mergeBoot returns cur with the fields set in b.
func mergeBoot(cur, b controller.BootOverride) controller.BootOverride {
	if b.Target != "" {
		cur.Target = b.Target
	}
	if b.Enabled != "" {
		cur.Enabled = b.Enabled
	}
	if b.Mode != "" {
		cur.Mode = b.Mode
	}
	return cur
}

// readBoot returns the boot override recorded in dir, the default when none is.
func readBoot(dir string) (controller.BootOverride, error) {
	var f bootFile
	if ok, err := readJSON(filepath.Join(dir, filenames.BootFile), &f); err != nil || !ok {
		return defaultBoot(), err
	}
	b := controller.BootOverride{Target: f.Target, Enabled: f.Enabled, Mode: f.Mode}
	// The file is only written by SetBoot, but a hand edit must not smuggle in PXE or UEFI.
	if err := checkBoot(b); err != nil {
		return defaultBoot(), fmt.Errorf("reading %s: %w", filenames.BootFile, err)
	}
	return mergeBoot(defaultBoot(), b), nil
}

// writeBoot records b in dir.
func writeBoot(dir string, b controller.BootOverride) error {
	return writeJSON(dir, filenames.BootFile, bootFile{Target: b.Target, Enabled: b.Enabled, Mode: b.Mode})
}

// readMedia returns the virtual CD recorded in dir; ok is false for an empty drive.
func readMedia(dir string) (m mediaFile, ok bool, err error) {
	ok, err = readJSON(filepath.Join(dir, filenames.MediaFile), &m)
	if err == nil && ok && m.Image == "" {
		return mediaFile{}, false, fmt.Errorf("reading %s: no image", filenames.MediaFile)
	}
	return m, ok, err
}

// readJSON decodes path into v; ok is false when the file does not exist.
func readJSON(path string, v any) (ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", filepath.Base(path), err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("reading %s: %w", filepath.Base(path), err)
	}
	return true, nil
}

// writeJSON writes v as dir/name, root-only, through a temporary file and a rename, so that a
// reader (Inspect takes no lock) and a crash see the old content or the new, never half of it.
func writeJSON(dir, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", name, err)
	}
	tmp, err := os.CreateTemp(dir, "."+name+"-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// requireVMDir returns controller.ErrNotInstalled when the server has no VM directory: a BMC
// setting needs a machine to belong to, which a repave makes, or the Server's BMC as a blank
// machine (EnsureBlankMachine).
func requireVMDir(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return controller.ErrNotInstalled
	} else if err != nil {
		return fmt.Errorf("reading VM directory: %w", err)
	}
	return nil
}

// SetBoot records the boot override in the server's VM directory; the next power-on honours it
// (PowerOn). Pxe and UEFI are refused with controller.ErrUnsupported: the simulator runs no PXE
// server, and its VMs have BIOS firmware only. A server never installed is
// controller.ErrNotInstalled.
func (p *Provider) SetBoot(_ context.Context, server types.NamespacedName, boot controller.BootOverride) error {
	if err := checkBoot(boot); err != nil {
		return err
	}
	defer p.lock(server)()
	dir := p.VMDir(server)
	if err := requireVMDir(dir); err != nil {
		return err
	}
	cur, err := readBoot(dir)
	if err != nil {
		cur = defaultBoot() // a damaged file is replaced by what the caller asks for now
	}
	next := mergeBoot(cur, boot)
	if err := writeBoot(dir, next); err != nil {
		return err
	}
	p.cfg.Log.Info("boot override set", "server", identity(server), "target", next.Target, "enabled", next.Enabled, "mode", next.Mode)
	return nil
}

// InsertMedia fetches the image at imageURL into the media cache, under the host's image policy
// (ImagePolicy: file:// only below --image-dir, http(s) address rules, size limit, timeouts),
// checks that it is an ISO (qemu.InspectMedia), and records it as the server's virtual CD. It
// waits for the download, at most MediaFetchTimeout. A running VM keeps running: the CD is
// attached at its next power-on. A request this host refuses is a *MediaRefusedError; a server
// never installed is controller.ErrNotInstalled. Inserting replaces the CD in the drive.
func (p *Provider) InsertMedia(ctx context.Context, server types.NamespacedName, imageURL string) error {
	dir := p.VMDir(server)
	if err := requireVMDir(dir); err != nil { // before downloading anything
		return err
	}
	// Downloading without the server's lock: power operations on it must not wait minutes.
	fctx, cancel := context.WithTimeout(ctx, MediaFetchTimeout)
	defer cancel()
	img, err := p.media.Fetch(fctx, imageURL, "", nil)
	if err != nil {
		if refused := mediaRefusal(err, imageURL); refused != nil {
			return refused
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return fmt.Errorf("fetching virtual media %s: not done within %s (try again; a finished download is kept): %w", imageURL, MediaFetchTimeout, err)
		}
		return fmt.Errorf("fetching virtual media %s: %w", imageURL, err)
	}
	defer p.lock(server)()
	if err := requireVMDir(dir); err != nil { // released while it downloaded
		return err
	}
	if err := writeJSON(dir, filenames.MediaFile, mediaFile{Image: imageURL, Digest: img.Digest, Path: img.Path}); err != nil {
		return err
	}
	p.cfg.Log.Info("virtual media inserted", "server", identity(server), "image", imageURL, "digest", img.Digest)
	return nil
}

// mediaRefusal is the *MediaRefusedError for a failed fetch whose cause is the request, or nil
// when the fetch failed for another reason (network, disk, timeout).
func mediaRefusal(err error, imageURL string) *MediaRefusedError {
	switch {
	case errors.Is(err, imagecache.ErrInvalidURL):
		return &MediaRefusedError{Reason: "InvalidImageURL", Err: err}
	case errors.Is(err, qemu.ErrUnsupportedMedia):
		return &MediaRefusedError{Reason: "UnsupportedMedia", Err: err,
			hint: " (virtual media must be an ISO 9660 image, or a raw disk image with a partition table such as a hybrid ISO)"}
	case errors.Is(err, imagecache.ErrNotAllowed), errors.Is(err, imagecache.ErrNotFound), errors.Is(err, imagecache.ErrTooLarge):
		reason, hint := imageFailureReason(err, imageURL)
		return &MediaRefusedError{Reason: reason, Err: err, hint: hint}
	}
	return nil
}

// EjectMedia forgets the server's virtual CD; a running VM keeps the CD it booted with until it
// stops, the next power-on has none. An empty drive, or a server never installed, is not an
// error.
func (p *Provider) EjectMedia(_ context.Context, server types.NamespacedName) error {
	defer p.lock(server)()
	err := os.Remove(filepath.Join(p.VMDir(server), filenames.MediaFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ejecting virtual media: %w", err)
	}
	p.cfg.Log.Info("virtual media ejected", "server", identity(server))
	return nil
}

// bootDevices decides, for a power-on of the VM in dir, the CD to attach ("" for none), whether
// to boot it first, and the boot override in effect (for PowerOn to use up a Once). The CD's path
// comes from the media cache, looked up by the recorded URL and digest under today's policy: a
// path read from the VM directory is never given to QEMU.
func (p *Provider) bootDevices(ctx context.Context, server types.NamespacedName, dir string) (cd string, bootCD bool, boot controller.BootOverride, err error) {
	boot, err = readBoot(dir)
	if err != nil {
		return "", false, boot, err
	}
	wantCD := boot.Target == controller.BootTargetCd && boot.Enabled != controller.BootDisabled
	m, inserted, err := readMedia(dir)
	if err == nil && inserted {
		var img imagecache.Image
		var ok bool
		img, ok, err = p.media.Lookup(ctx, m.Image, m.Digest)
		if err == nil && !ok {
			err = errors.New("it is no longer in the media cache")
		}
		if err == nil {
			return img.Path, wantCD, boot, nil
		}
	}
	switch {
	case err != nil && wantCD:
		return "", false, boot, fmt.Errorf("the boot override asks for the virtual CD, which cannot be attached (insert it again, or eject it): %w", err)
	case err != nil:
		// The disk boots first anyway: a CD that cannot be attached must not keep the server off.
		p.cfg.Log.Info("booting without the virtual CD, which cannot be attached", "server", identity(server), "error", err.Error())
	case wantCD:
		// An empty drive: a real BIOS moves on to the disk, and so does the simulator.
		p.cfg.Log.Info("the boot override asks for the virtual CD, but none is inserted: booting the disk", "server", identity(server))
	}
	return "", false, boot, nil
}

// mediaInfo is the virtual CD Inspect reports.
func mediaInfo(dir string) (controller.Media, error) {
	m, ok, err := readMedia(dir)
	if err != nil || !ok {
		return controller.Media{}, err
	}
	return controller.Media{Image: m.Image, Inserted: true}, nil
}
