package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrUnsupportedMedia is returned (wrapped) for a file that is not virtual media Stargate attaches
// as a VM's CD: anything but an ISO 9660 image or a raw disk image with a partition table (a
// hybrid ISO). A CD is always given to QEMU as raw, read-only data, so no format is probed; the
// check still refuses disk-image formats (qcow2, VMDK, ...) because attaching one as a CD is a
// mistake a user should hear about, not a CD of garbage.
var ErrUnsupportedMedia = errors.New("unsupported virtual media")

// iso9660Magic is the standard identifier of the first volume descriptor, which starts at byte
// 32768 (sector 16 of 2048 bytes) after its one-byte type.
const (
	iso9660Magic  = "CD001"
	iso9660Offset = 32769
)

// mediaProbeSize is how much of a file's start InspectMedia reads: past the ISO 9660 volume
// descriptor, and enough for the partition-table and disk-format checks of DetectImageFormat.
const mediaProbeSize = headerProbeSize

// InspectMedia checks that path is an image Stargate may attach as a VM's virtual CD: an ISO 9660
// image, or a raw disk image with a partition table (hybrid ISOs have both). Anything else is an
// error wrapping ErrUnsupportedMedia. Like InspectBaseImage it reads only the file's first bytes,
// opens no symlink, FIFO or device, and its errors do not name path.
func InspectMedia(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("inspecting media: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("inspecting media: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file: %w", ErrUnsupportedMedia)
	}
	head := make([]byte, mediaProbeSize)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("inspecting media: %w", err)
	}
	return DetectMediaFormat(head[:n])
}

// DetectMediaFormat accepts the first bytes (at least 32774) of an ISO 9660 image or of a raw
// disk with a partition table; anything else, qcow2 and the other disk-image formats included,
// is an error wrapping ErrUnsupportedMedia that says what the bytes look like.
func DetectMediaFormat(head []byte) error {
	// Disk-image formats first: a qcow2 whose data happens to hold "CD001" is still no CD.
	if bytes.HasPrefix(head, []byte(qcow2Magic)) {
		return fmt.Errorf("it is a qcow2 disk image, not an ISO (disk images are installed by a repave): %w", ErrUnsupportedMedia)
	}
	for _, o := range otherFormats {
		if len(head) >= o.offset+len(o.magic) && string(head[o.offset:o.offset+len(o.magic)]) == o.magic {
			return fmt.Errorf("it is a %s disk image, not an ISO: %w", o.name, ErrUnsupportedMedia)
		}
	}
	if len(head) >= iso9660Offset+len(iso9660Magic) && string(head[iso9660Offset:iso9660Offset+len(iso9660Magic)]) == iso9660Magic {
		return nil
	}
	if hasPartitionTable(head) {
		return nil // a hybrid ISO's MBR, or a USB-stick image
	}
	what := "it looks like binary data"
	switch {
	case len(head) == 0:
		what = "it is empty"
	case looksLikeText(head):
		what = "it looks like text, perhaps an HTML page or an error message"
	}
	return fmt.Errorf("it is not an ISO image: no ISO 9660 volume descriptor and no partition table (%s): %w", what, ErrUnsupportedMedia)
}
