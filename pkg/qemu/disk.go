package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// diskSectorSize is the granularity of a disk's virtual size; qemu-img rounds
// up to it anyway, rounding first keeps our arithmetic equal to its result.
const diskSectorSize = 512

// CreateOverlay creates a qcow2 disk at path backed by the (never written) base image, with the given virtual size in bytes.
// It costs the same for a 600 MB or a 6 GB base. An existing file at path is replaced (repave = fresh overlay).
// If sizeBytes is smaller than the base's virtual size, use the base's virtual size (and say so in no error).
//
// The base must pass InspectBaseImage (a self-contained qcow2 or a raw disk
// with a partition table; otherwise the error wraps ErrUnsupportedImage). The
// backing file is recorded by absolute path (so the overlay does not depend on
// the working directory) together with its format as detected from its magic
// bytes, so neither qemu-img nor QEMU ever probes the base. The overlay is
// built under a temp name and renamed into place: a failure leaves the old
// disk, never a half-made one. Temp files of earlier calls for path whose process died (a crash
// or SIGKILL during qemu-img create) are removed first: callers never create one path's disk
// twice at once.
// The file is 0600 because a booted disk may hold the guest's secrets.
func CreateOverlay(ctx context.Context, base, path string, sizeBytes int64) error {
	absBase, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("base image %s: %w", base, err)
	}
	// Checked again although the image cache checks what it stores: a base that could name
	// other host files must never reach qemu-img create or QEMU, whoever put it here.
	info, err := InspectBaseImage(ctx, absBase)
	if err != nil {
		return fmt.Errorf("base image %s: %w", absBase, err)
	}
	size := max(sizeBytes, info.VirtualSize)
	size = (size + diskSectorSize - 1) / diskSectorSize * diskSectorSize

	if err := removeOverlayTemps(path); err != nil {
		return fmt.Errorf("creating overlay %s: %w", path, err)
	}
	err = writeImage(path, func(tmp string) error {
		_, err := execQemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", info.Format, "-b", absBase, tmp, strconv.FormatInt(size, 10))
		return err
	})
	if err != nil {
		return fmt.Errorf("creating overlay %s: %w", path, err)
	}
	return nil
}

// CreateBlankDisk creates an empty qcow2 disk of sizeBytes (rounded up to a sector) at path, as
// a new server's disk is empty: nothing is allocated until the guest writes, so it costs no
// space up front whatever its size. It is built under a temp name and renamed into place, 0600,
// like an overlay; an existing file at path is replaced.
func CreateBlankDisk(ctx context.Context, path string, sizeBytes int64) error {
	if sizeBytes <= 0 {
		return fmt.Errorf("creating blank disk %s: size %d is not positive", path, sizeBytes)
	}
	size := (sizeBytes + diskSectorSize - 1) / diskSectorSize * diskSectorSize
	if err := removeOverlayTemps(path); err != nil {
		return fmt.Errorf("creating blank disk %s: %w", path, err)
	}
	err := writeImage(path, func(tmp string) error {
		_, err := execQemuImg(ctx, "create", "-q", "-f", "qcow2", tmp, strconv.FormatInt(size, 10))
		return err
	})
	if err != nil {
		return fmt.Errorf("creating blank disk %s: %w", path, err)
	}
	return nil
}

// writeImage makes the image at path by write, which writes it to the temp file it is given (named
// by overlayTempPattern), then makes it 0600 and renames it into place: a failure leaves no file
// at path and no temp file. CreateTemp makes the file 0600 before any byte is in it; qemu-img
// reuses an existing file and keeps its mode, and the chmod is explicit in case a directory's
// default ACL or qemu-img widened it.
func writeImage(path string, write func(tmp string) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), overlayTempPattern(path))
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	tmp.Close()
	done := false
	defer func() {
		if !done {
			os.Remove(tmpName)
		}
	}()
	if err := write(tmpName); err != nil {
		return err
	}
	if err := os.Chmod(tmpName, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		return err
	}
	done = true
	return nil
}

// overlayTempPattern names the temp files CreateOverlay builds path's overlay in (os.CreateTemp).
func overlayTempPattern(path string) string { return "." + filepath.Base(path) + ".tmp-*" }

// removeOverlayTemps removes the temp files left by CreateOverlay calls for path that never finished.
func removeOverlayTemps(path string) error {
	stale, err := filepath.Glob(filepath.Join(filepath.Dir(path), overlayTempPattern(path)))
	if err != nil {
		return err
	}
	for _, f := range stale {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// execQemuImg runs qemu-img with args (never through a shell) and returns its
// stdout. A failure names the command line and carries its output, because
// qemu-img's message is the only useful part of the diagnosis.
func execQemuImg(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		output := strings.TrimSpace(stderr.String() + stdout.String())
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, output)
	}
	return stdout.Bytes(), nil
}

// Flatten writes the disk at src, with everything its backing chain holds, to dst as one
// self-contained qcow2 image (no backing file), as a golden image must be: VM disks then overlay
// it alone. It is written under a temp name and renamed into place, 0600; a failure leaves no dst.
// Unallocated areas stay sparse; nothing is compressed, so guests read it at full speed.
func Flatten(ctx context.Context, src, dst string) error {
	err := writeImage(dst, func(tmp string) error {
		// -f qcow2: src is an overlay this host made, never probed. qemu-img creates the target
		// (in the temp file's place) with the source's virtual size.
		if _, err := execQemuImg(ctx, "convert", "-q", "-f", "qcow2", "-O", "qcow2", src, tmp); err != nil {
			return err
		}
		if _, err := InspectBaseImage(ctx, tmp); err != nil {
			return err
		}
		f, err := os.Open(tmp)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync() // on disk before the rename makes it a golden image
	})
	if err != nil {
		return fmt.Errorf("flattening %s into %s: %w", src, dst, err)
	}
	return nil
}
