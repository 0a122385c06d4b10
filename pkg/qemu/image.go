package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Base image formats: the only two a cached OS image may have. Both are read by QEMU with the
// format given explicitly, so QEMU never guesses a format from an image's content.
const (
	FormatQCOW2 = "qcow2"
	FormatRaw   = "raw"
)

// ErrUnsupportedImage is returned (wrapped) for a file that is not a disk image Stargate boots:
// anything but a self-contained qcow2 (no backing file, no external data file, no encryption) or
// a raw disk with a partition table. Such files are never cached nor booted, because several
// image formats (qcow2 backing files, VMDK descriptors, ...) can name other files on the host,
// which QEMU, running as root, would then read into a guest.
var ErrUnsupportedImage = errors.New("unsupported image")

// inspectTimeout bounds a qemu-img info on a downloaded (untrusted) image: a crafted image must
// not be able to hang the caller.
const inspectTimeout = 30 * time.Second

// headerProbeSize is how much of an image's start is read to recognise its format: enough for
// a qcow2 header with its extensions in the first cluster (qemu-img writes them in the first
// 64 KiB cluster; larger clusters are read further, see readQCOW2Extensions) and for a GPT
// header at LBA 1 of a 4 KiB-sector disk.
const headerProbeSize = 64 << 10

// qcow2 header fields (big endian), from QEMU's docs/interop/qcow2.txt.
const (
	qcow2Magic                 = "QFI\xfb"
	qcow2OffVersion            = 4
	qcow2OffBackingFileOffset  = 8
	qcow2OffBackingFileSize    = 16
	qcow2OffClusterBits        = 20
	qcow2OffSize               = 24
	qcow2OffCryptMethod        = 32
	qcow2OffIncompatible       = 72
	qcow2OffHeaderLength       = 100
	qcow2V2HeaderLength        = 72
	qcow2IncompatExternalData  = 1 << 2
	qcow2ExtEnd                = 0x00000000
	qcow2ExtExternalDataFile   = 0x44415441
	qcow2ExtFullDiskEncryption = 0x0537be77
)

// otherFormats are magic numbers of image formats QEMU knows besides qcow2 and raw, with their
// names, so an unsupported image is refused with a message that says what it is.
var otherFormats = []struct {
	offset int
	magic  string
	name   string
}{
	{0, "KDMV", "VMDK"},
	{0, "COWD", "VMDK (ESX COWD)"},
	{0, "# Disk DescriptorFile", "VMDK (descriptor)"},
	{0, "vhdxfile", "VHDX"},
	{0, "conectix", "VHD"},
	{0, "QED\x00", "QED"},
	{0, "LUKS\xba\xbe", "LUKS"},
	{0, "WithoutFreeSpace", "Parallels"},
	{0, "WithouFreSpacExt", "Parallels"},
	{0, "Bochs Virtual HD Image", "Bochs"},
	{0, "#!/bin/sh\n#V2.0 Format", "cloop"},
	{64, "\x7f\x10\xda\xbe", "VDI"},
}

// BaseImage is what InspectBaseImage found out about a disk image.
type BaseImage struct {
	// Format is FormatQCOW2 or FormatRaw.
	Format string
	// VirtualSize is the size of the disk the guest sees, in bytes.
	VirtualSize int64
}

// InspectBaseImage checks that path is a disk image Stargate may boot and returns its format
// and virtual size; anything else is an error wrapping ErrUnsupportedImage. Errors about the
// content do not name path (the caller knows what the file stands for, e.g. a URL).
//
// The format is recognised from the file's first bytes here, never by qemu-img: probing makes
// QEMU interpret an untrusted file by whatever format it claims to be. A qcow2's header is read
// here too (backing file, external data file, encryption) before qemu-img opens it, and then
// qemu-img info is told the format (-f) and checked for file references once more. A raw image
// must start with a partition table (an MBR boot signature or a GPT header), which an HTML page,
// a text file or a VMDK descriptor does not.
func InspectBaseImage(ctx context.Context, path string) (BaseImage, error) {
	// O_NONBLOCK: opening a FIFO must not block; O_NOFOLLOW: the path is the file itself.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return BaseImage{}, fmt.Errorf("inspecting image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return BaseImage{}, fmt.Errorf("inspecting image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return BaseImage{}, fmt.Errorf("not a regular file: %w", ErrUnsupportedImage)
	}
	head := make([]byte, headerProbeSize)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return BaseImage{}, fmt.Errorf("inspecting image: %w", err)
	}
	head = head[:n]

	format, err := DetectImageFormat(head)
	if err != nil {
		return BaseImage{}, err
	}
	if format == FormatRaw {
		return BaseImage{Format: FormatRaw, VirtualSize: fi.Size()}, nil
	}
	size, err := checkQCOW2Header(f, head)
	if err != nil {
		return BaseImage{}, err
	}
	if err := checkQCOW2Info(ctx, path); err != nil {
		return BaseImage{}, err
	}
	return BaseImage{Format: FormatQCOW2, VirtualSize: size}, nil
}

// DetectImageFormat names the format of an image from its first bytes (at least the first
// 1 KiB, or 8 KiB to see a GPT on a 4 KiB-sector disk): FormatQCOW2, or FormatRaw for a disk
// with a partition table. Anything else is an error wrapping ErrUnsupportedImage that says
// what the bytes look like, without quoting them (they may be a server's error page, or worse).
func DetectImageFormat(head []byte) (string, error) {
	if bytes.HasPrefix(head, []byte(qcow2Magic)) {
		if len(head) < qcow2OffVersion+4 {
			return "", fmt.Errorf("truncated qcow2 header: %w", ErrUnsupportedImage)
		}
		if v := binary.BigEndian.Uint32(head[qcow2OffVersion:]); v != 2 && v != 3 {
			return "", fmt.Errorf("qcow version %d (only qcow2 versions 2 and 3 are supported): %w", v, ErrUnsupportedImage)
		}
		return FormatQCOW2, nil
	}
	for _, o := range otherFormats {
		if len(head) >= o.offset+len(o.magic) && string(head[o.offset:o.offset+len(o.magic)]) == o.magic {
			return "", fmt.Errorf("it is a %s image; only qcow2 and raw disk images are supported: %w", o.name, ErrUnsupportedImage)
		}
	}
	if hasPartitionTable(head) {
		return FormatRaw, nil
	}
	what := "it looks like binary data"
	switch {
	case len(head) == 0:
		what = "it is empty"
	case looksLikeText(head):
		what = "it looks like text, perhaps an HTML page or an error message"
	}
	return "", fmt.Errorf("it is not a disk image: no qcow2 header and no partition table (%s): %w", what, ErrUnsupportedImage)
}

// hasPartitionTable reports an MBR boot signature at byte 510 or a GPT header at LBA 1 of a
// disk with 512- or 4096-byte sectors.
func hasPartitionTable(head []byte) bool {
	if len(head) >= 512 && head[510] == 0x55 && head[511] == 0xaa {
		return true
	}
	for _, lba1 := range []int{512, 4096} {
		if len(head) >= lba1+8 && string(head[lba1:lba1+8]) == "EFI PART" {
			return true
		}
	}
	return false
}

// looksLikeText reports whether the first bytes are printable text, to tell a user that a URL
// served a page instead of an image.
func looksLikeText(head []byte) bool {
	head = head[:min(len(head), 512)]
	if len(head) == 0 {
		return false
	}
	for _, b := range head {
		if b < 0x20 && b != '\n' && b != '\r' && b != '\t' {
			return false
		}
	}
	return true
}

// checkQCOW2Header refuses a qcow2 that refers to anything outside itself or cannot be read
// without a secret, and returns its virtual size. f is the image, head its first bytes.
func checkQCOW2Header(f *os.File, head []byte) (int64, error) {
	if len(head) < qcow2V2HeaderLength {
		return 0, fmt.Errorf("truncated qcow2 header: %w", ErrUnsupportedImage)
	}
	be := binary.BigEndian
	if be.Uint64(head[qcow2OffBackingFileOffset:]) != 0 || be.Uint32(head[qcow2OffBackingFileSize:]) != 0 {
		return 0, fmt.Errorf("the qcow2 image has a backing file; a base image must be self-contained: %w", ErrUnsupportedImage)
	}
	if be.Uint32(head[qcow2OffCryptMethod:]) != 0 {
		return 0, fmt.Errorf("the qcow2 image is encrypted: %w", ErrUnsupportedImage)
	}
	clusterBits := be.Uint32(head[qcow2OffClusterBits:])
	if clusterBits < 9 || clusterBits > 21 {
		return 0, fmt.Errorf("the qcow2 header is invalid (cluster bits %d): %w", clusterBits, ErrUnsupportedImage)
	}
	size := be.Uint64(head[qcow2OffSize:])
	if size > 1<<62 {
		return 0, fmt.Errorf("the qcow2 header is invalid (virtual size %d): %w", size, ErrUnsupportedImage)
	}
	headerLength := uint32(qcow2V2HeaderLength)
	if be.Uint32(head[qcow2OffVersion:]) == 3 {
		if len(head) < qcow2OffHeaderLength+4 {
			return 0, fmt.Errorf("truncated qcow2 header: %w", ErrUnsupportedImage)
		}
		if be.Uint64(head[qcow2OffIncompatible:])&qcow2IncompatExternalData != 0 {
			return 0, fmt.Errorf("the qcow2 image keeps its data in an external data file: %w", ErrUnsupportedImage)
		}
		headerLength = be.Uint32(head[qcow2OffHeaderLength:])
	}
	// Header extensions follow the header, up to the end of the first cluster.
	cluster := int64(1) << clusterBits
	if int64(headerLength) >= cluster {
		return 0, fmt.Errorf("the qcow2 header is invalid (header length %d): %w", headerLength, ErrUnsupportedImage)
	}
	exts := make([]byte, cluster-int64(headerLength))
	n, err := f.ReadAt(exts, int64(headerLength))
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("reading qcow2 header extensions: %w", err)
	}
	exts = exts[:n]
	for off := 0; off+8 <= len(exts); {
		typ, length := be.Uint32(exts[off:]), int(be.Uint32(exts[off+4:]))
		switch typ {
		case qcow2ExtEnd:
			return int64(size), nil
		case qcow2ExtExternalDataFile:
			return 0, fmt.Errorf("the qcow2 image names an external data file: %w", ErrUnsupportedImage)
		case qcow2ExtFullDiskEncryption:
			return 0, fmt.Errorf("the qcow2 image is encrypted: %w", ErrUnsupportedImage)
		}
		off += 8 + (length+7)/8*8
	}
	// No end marker within the first cluster: QEMU would refuse the image too.
	return 0, fmt.Errorf("the qcow2 header extensions are invalid: %w", ErrUnsupportedImage)
}

// qemuImgInfo is the part of `qemu-img info --output=json` checked for file references.
type qemuImgInfo struct {
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	Encrypted           bool   `json:"encrypted"`
	FormatSpecific      struct {
		Data struct {
			DataFile string          `json:"data-file"`
			Encrypt  json.RawMessage `json:"encrypt"`
		} `json:"data"`
	} `json:"format-specific"`
}

// checkQCOW2Info asks qemu-img, told that path is qcow2, whether the image names any other file:
// a second opinion after checkQCOW2Header, from the code that will open the image at boot.
func checkQCOW2Info(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, inspectTimeout)
	defer cancel()
	// --force-share: a running VM holds locks on its disks' backing files; a read-only
	// query must not fail because of them.
	out, err := execQemuImg(ctx, "info", "-f", FormatQCOW2, "--force-share", "--output=json", path)
	if err != nil {
		return fmt.Errorf("inspecting image: %w", err)
	}
	var info qemuImgInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return fmt.Errorf("inspecting image: parsing qemu-img output: %w", err)
	}
	switch {
	case info.Format != FormatQCOW2:
		return fmt.Errorf("qemu-img reports format %q, not qcow2: %w", info.Format, ErrUnsupportedImage)
	case info.BackingFilename != "" || info.FullBackingFilename != "":
		return fmt.Errorf("the qcow2 image has a backing file; a base image must be self-contained: %w", ErrUnsupportedImage)
	case info.FormatSpecific.Data.DataFile != "":
		return fmt.Errorf("the qcow2 image keeps its data in an external data file: %w", ErrUnsupportedImage)
	case info.Encrypted || len(info.FormatSpecific.Data.Encrypt) > 0:
		return fmt.Errorf("the qcow2 image is encrypted: %w", ErrUnsupportedImage)
	}
	return nil
}
