package installer

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"stargate.io/stargate/pkg/installspec"
)

// Disk is what sysfs says about one block device.
type Disk struct {
	Name      string // kernel name, e.g. vda, sda, nvme0n1
	Path      string // device node, e.g. /dev/vda
	SizeBytes int64
	Serial    string
	WWN       string
	Model     string
	Removable bool
	ReadOnly  bool
	CDROM     bool
	// Virtual devices (loop, ram, zram, dm, md, nbd...) have no backing hardware ("device" link).
	Virtual bool
	// InstallerMedium: the device carries the installer ISO (the virtual CD shown as a disk).
	InstallerMedium bool
}

func (d Disk) String() string {
	s := fmt.Sprintf("%s (%d bytes", d.Path, d.SizeBytes)
	if d.Model != "" {
		s += ", model " + d.Model
	}
	if d.Serial != "" {
		s += ", serial " + d.Serial
	}
	if d.WWN != "" {
		s += ", wwn " + d.WWN
	}
	return s + ")"
}

// ScanDisks lists the block devices in sysBlock (/sys/block) with their device nodes under devDir
// (/dev). It reads each node's first 34 KiB to recognize the installer ISO.
func ScanDisks(sysBlock, devDir string) ([]Disk, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("listing block devices: %w", err)
	}
	var disks []Disk
	for _, e := range entries {
		dir := filepath.Join(sysBlock, e.Name())
		d := Disk{Name: e.Name(), Path: filepath.Join(devDir, e.Name())}
		sectors, err := strconv.ParseInt(readAttr(dir, "size"), 10, 64)
		if err != nil {
			continue // not a block device directory
		}
		d.SizeBytes = sectors * 512 // sysfs counts 512-byte sectors whatever the logical block size
		d.Removable = readAttr(dir, "removable") == "1"
		d.ReadOnly = readAttr(dir, "ro") == "1"
		if _, err := os.Stat(filepath.Join(dir, "device")); err != nil {
			d.Virtual = true
		}
		// SCSI peripheral type 5 is a CD/DVD drive (sr driver); so is any srN.
		d.CDROM = strings.HasPrefix(d.Name, "sr") || readAttr(dir, "device/type") == "5"
		d.Model = readAttr(dir, "device/model")
		d.Serial = firstNonEmpty(readAttr(dir, "serial"), readAttr(dir, "device/serial"), vpdSerial(filepath.Join(dir, "device/vpd_pg80")))
		d.WWN = firstNonEmpty(readAttr(dir, "wwid"), readAttr(dir, "device/wwid"))
		if !d.Virtual && d.SizeBytes > 0 {
			d.InstallerMedium = carriesInstallerISO(d.Path)
		}
		disks = append(disks, d)
	}
	return disks, nil
}

func readAttr(dir, name string) string {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// vpdSerial reads the unit serial number from a SCSI VPD page 0x80: a 4-byte header whose last
// byte is the length, then the serial in ASCII.
func vpdSerial(file string) string {
	b, err := os.ReadFile(file)
	if err != nil || len(b) < 4 || b[1] != 0x80 {
		return ""
	}
	n := int(b[3])
	if 4+n > len(b) {
		n = len(b) - 4
	}
	return strings.TrimSpace(string(b[4 : 4+n]))
}

// carriesInstallerISO reports whether the device holds an ISO 9660 file system whose volume
// identifier is the installer's: its primary volume descriptor is at byte 32768.
func carriesInstallerISO(dev string) bool {
	f, err := os.Open(dev)
	if err != nil {
		return false
	}
	defer f.Close()
	pvd := make([]byte, 80)
	if _, err := f.ReadAt(pvd, 32768); err != nil {
		return false
	}
	return pvd[0] == 1 && string(pvd[1:6]) == "CD001" &&
		string(bytes.TrimRight(pvd[40:72], " ")) == installspec.ISOVolumeID
}

// normalizeWWN makes the spellings of one WWN comparable: "0x5000C500A1B2C3D4", "naa.5000c500a1b2c3d4"
// and "wwn-0x5000c500a1b2c3d4" are the same name.
func normalizeWWN(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	for _, prefix := range []string{"wwn-", "naa.", "eui.", "t10.", "0x"} {
		s = strings.TrimPrefix(s, prefix)
	}
	return s
}

// ChooseDisk picks the target disk: the one disk that may be written (not a CD, removable,
// read-only or virtual device, not the installer medium, at least minBytes large) and matches the
// hint. No such disk, or more than one, is an error that lists every disk and why it was passed
// over, so that an operator can fix the hint.
func ChooseDisk(disks []Disk, hint installspec.RootDeviceHint, minBytes int64) (Disk, error) {
	need := max(minBytes, hint.MinSizeBytes)
	sorted := append([]Disk(nil), disks...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var matches []Disk
	var notes []string
	for _, d := range sorted {
		reason := ""
		switch {
		case d.Virtual:
			continue // loop, ram, dm...: never a target, not worth listing
		case d.CDROM:
			reason = "a CD/DVD drive"
		case d.InstallerMedium:
			reason = "the installer's own medium"
		case d.Removable:
			reason = "removable"
		case d.ReadOnly:
			reason = "read-only"
		case d.SizeBytes < need:
			reason = fmt.Sprintf("smaller than the %d bytes needed", need)
		case hint.Serial != "" && !strings.EqualFold(strings.TrimSpace(d.Serial), strings.TrimSpace(hint.Serial)):
			reason = fmt.Sprintf("serial %q is not the hint's %q", d.Serial, hint.Serial)
		case hint.WWN != "" && normalizeWWN(d.WWN) != normalizeWWN(hint.WWN):
			reason = fmt.Sprintf("WWN %q is not the hint's %q", d.WWN, hint.WWN)
		}
		if reason != "" {
			notes = append(notes, d.String()+": "+reason)
			continue
		}
		matches = append(matches, d)
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		if len(notes) == 0 {
			return Disk{}, fmt.Errorf("no disk found: is the storage controller's driver missing from the installer? (serial console lists modules loaded)")
		}
		return Disk{}, fmt.Errorf("no disk fits the root device hint %s: %s", describeHint(hint, need), strings.Join(notes, "; "))
	default:
		names := make([]string, len(matches))
		for i, d := range matches {
			names[i] = d.String()
		}
		return Disk{}, fmt.Errorf("%d disks fit the root device hint %s, refusing to guess: %s; name one by serial or WWN",
			len(matches), describeHint(hint, need), strings.Join(names, ", "))
	}
}

func describeHint(h installspec.RootDeviceHint, need int64) string {
	var parts []string
	if h.Serial != "" {
		parts = append(parts, fmt.Sprintf("serial=%q", h.Serial))
	}
	if h.WWN != "" {
		parts = append(parts, fmt.Sprintf("wwn=%q", h.WWN))
	}
	parts = append(parts, fmt.Sprintf("size>=%d", need))
	return "(" + strings.Join(parts, ", ") + ")"
}
