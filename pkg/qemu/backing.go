package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrNotQCOW2 is returned (wrapped) by BackingFile for a file that does not start with the
// qcow2 magic: such a file has no backing file a qcow2 reader would follow.
var ErrNotQCOW2 = errors.New("not a qcow2 image")

// qcow2MaxBackingName is the longest backing file name QEMU accepts (it refuses longer ones as
// "Backing file name too long"), so a longer one in a header is damage or an attack.
const qcow2MaxBackingName = 1023

// BackingFile returns the backing file name recorded in the header of the qcow2 image at path,
// as written (an absolute path for overlays made by CreateOverlay; a relative one is relative
// to the image's directory), or "" when it has none. It reads only the header, in pure Go:
// the image cache's pruning calls it for every VM disk, where a qemu-img process each would
// cost more than the pruning itself.
//
// The header is untrusted: a file that is not qcow2 is an error wrapping ErrNotQCOW2, and a
// truncated header, a name longer than QEMU accepts, one past the end of the file or with a
// NUL byte are errors — never a panic nor an allocation larger than the name QEMU would read.
// path itself must be a regular file, not a symlink (O_NOFOLLOW).
func BackingFile(path string) (string, error) {
	// O_NONBLOCK: a FIFO in a VM directory must not block the caller.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("reading the backing file of %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("reading the backing file of %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("reading the backing file of %s: not a regular file", path)
	}
	name, err := readBackingFile(f, fi.Size())
	if err != nil {
		return "", fmt.Errorf("reading the backing file of %s: %w", path, err)
	}
	return name, nil
}

// readBackingFile parses the backing file name out of the qcow2 image r of size bytes.
func readBackingFile(r io.ReaderAt, size int64) (string, error) {
	var head [qcow2OffBackingFileSize + 4]byte
	n, err := r.ReadAt(head[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	if n < len(qcow2Magic) || string(head[:len(qcow2Magic)]) != qcow2Magic {
		return "", ErrNotQCOW2
	}
	if n < len(head) {
		return "", fmt.Errorf("truncated qcow2 header (%d bytes)", n)
	}
	be := binary.BigEndian
	if v := be.Uint32(head[qcow2OffVersion:]); v != 2 && v != 3 {
		return "", fmt.Errorf("qcow version %d (only 2 and 3 are known)", v)
	}
	offset := be.Uint64(head[qcow2OffBackingFileOffset:])
	length := be.Uint32(head[qcow2OffBackingFileSize:])
	if offset == 0 { // QEMU's rule: no offset, no backing file, whatever the size says
		return "", nil
	}
	switch {
	case length == 0:
		return "", fmt.Errorf("backing file offset %d with an empty name", offset)
	case length > qcow2MaxBackingName:
		return "", fmt.Errorf("backing file name of %d bytes (QEMU reads at most %d)", length, qcow2MaxBackingName)
	case offset < qcow2V2HeaderLength || offset > uint64(size) || uint64(size)-offset < uint64(length):
		return "", fmt.Errorf("backing file name at %d+%d is outside the header of a %d-byte file", offset, length, size)
	}
	name := make([]byte, length) // at most qcow2MaxBackingName, checked above
	if _, err := r.ReadAt(name, int64(offset)); err != nil {
		return "", fmt.Errorf("reading the backing file name: %w", err)
	}
	if bytes.IndexByte(name, 0) >= 0 {
		return "", errors.New("backing file name contains a NUL byte")
	}
	return string(name), nil
}
