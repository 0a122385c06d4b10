package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Virtual media is an ISO 9660 image or a raw disk with a partition table (hybrid ISOs); a disk
// image of any other format, text or random bytes is refused with ErrUnsupportedMedia and a
// message that says what the file looks like.
func TestDetectMediaFormat(t *testing.T) {
	iso := make([]byte, 40<<10)
	copy(iso[iso9660Offset-1:], "\x01CD001\x01")
	mbr := make([]byte, 4<<10)
	mbr[510], mbr[511] = 0x55, 0xaa
	hybrid := append([]byte(nil), iso...)
	hybrid[510], hybrid[511] = 0x55, 0xaa
	qcow2ISO := append([]byte(nil), iso...) // a qcow2 whose data holds "CD001" at the ISO's spot
	copy(qcow2ISO, "QFI\xfb\x00\x00\x00\x03")
	vmdk := append([]byte("# Disk DescriptorFile\n"), iso...)
	for _, tc := range []struct {
		name string
		head []byte
		want string // "" accepts
	}{
		{"iso9660", iso, ""},
		{"mbr disk", mbr, ""},
		{"hybrid iso", hybrid, ""},
		{"qcow2", qcow2ISO, "qcow2 disk image"},
		{"vmdk", vmdk, "VMDK"},
		{"text", []byte("<html>404 not found</html>"), "looks like text"},
		{"empty", nil, "is empty"},
		{"binary", make([]byte, 40<<10), "binary data"},
		{"iso truncated before its descriptor", iso[:iso9660Offset+2], "binary data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := DetectMediaFormat(tc.head)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (!errors.Is(err, ErrUnsupportedMedia) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err = %v, want ErrUnsupportedMedia saying %q", err, tc.want)
			}
		})
	}
}

// InspectMedia reads regular files only: a symlink (perhaps to a device or a host file) is
// refused rather than followed.
func TestInspectMediaFiles(t *testing.T) {
	dir := t.TempDir()
	iso := make([]byte, 40<<10)
	copy(iso[iso9660Offset:], iso9660Magic)
	path := filepath.Join(dir, "cd.iso")
	if err := os.WriteFile(path, iso, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := InspectMedia(path); err != nil {
		t.Errorf("ISO refused: %v", err)
	}
	link := filepath.Join(dir, "link.iso")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if err := InspectMedia(link); err == nil {
		t.Error("a symlink was followed")
	}
	if err := InspectMedia(dir); !errors.Is(err, ErrUnsupportedMedia) {
		t.Errorf("a directory: %v, want ErrUnsupportedMedia", err)
	}
}
