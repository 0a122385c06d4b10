package installer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stargate.io/stargate/pkg/installspec"
)

const gib = int64(1) << 30

func TestChooseDisk(t *testing.T) {
	disks := []Disk{
		{Name: "loop0", Path: "/dev/loop0", SizeBytes: 100 * gib, Virtual: true},
		{Name: "sr0", Path: "/dev/sr0", SizeBytes: 1 * gib, CDROM: true},
		{Name: "sdb", Path: "/dev/sdb", SizeBytes: 1 * gib, Removable: true, InstallerMedium: true},
		{Name: "sdc", Path: "/dev/sdc", SizeBytes: 64 * gib, Removable: true},
		{Name: "sda", Path: "/dev/sda", SizeBytes: 480 * gib, Serial: "S3Z9NB0K123", WWN: "naa.5002538e40a1b2c3"},
		{Name: "nvme0n1", Path: "/dev/nvme0n1", SizeBytes: 960 * gib, Serial: "PHLJ0001", WWN: "eui.0025388b91b2c3d4"},
		{Name: "vda", Path: "/dev/vda", SizeBytes: 2 * gib, Serial: "small"},
	}
	for _, tc := range []struct {
		name    string
		hint    installspec.RootDeviceHint
		need    int64
		want    string
		wantErr string
	}{
		{"by serial", installspec.RootDeviceHint{Serial: "S3Z9NB0K123"}, 3 * gib, "sda", ""},
		{"serial ignores case and blanks", installspec.RootDeviceHint{Serial: " phlj0001 "}, 3 * gib, "nvme0n1", ""},
		{"WWN in another spelling", installspec.RootDeviceHint{WWN: "0x5002538E40A1B2C3"}, 3 * gib, "sda", ""},
		{"by minimum size", installspec.RootDeviceHint{MinSizeBytes: 900 * gib}, 3 * gib, "nvme0n1", ""},
		{"the image decides the size", installspec.RootDeviceHint{}, 500 * gib, "nvme0n1", ""},
		{"no hint, two fit: ambiguous", installspec.RootDeviceHint{}, 3 * gib, "", "2 disks fit"},
		{"serial of a disk too small", installspec.RootDeviceHint{Serial: "small"}, 3 * gib, "", "smaller than"},
		{"unknown serial", installspec.RootDeviceHint{Serial: "nope"}, 3 * gib, "", "no disk fits"},
		{"serial and WWN of different disks", installspec.RootDeviceHint{Serial: "PHLJ0001", WWN: "naa.5002538e40a1b2c3"}, 3 * gib, "", "no disk fits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ChooseDisk(disks, tc.hint, tc.need)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ChooseDisk = %v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				// The reason lists the disks passed over, but never offers the CD or the installer medium.
				for _, never := range []string{"/dev/loop0"} {
					if strings.Contains(err.Error(), never) {
						t.Errorf("error mentions %s: %v", never, err)
					}
				}
				return
			}
			if err != nil || got.Name != tc.want {
				t.Fatalf("ChooseDisk = %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestChooseDiskNeverTheInstallerMedium(t *testing.T) {
	// The BMC's virtual CD shown as a plain USB disk: not removable, not a CD, but it carries the ISO.
	disks := []Disk{{Name: "sda", Path: "/dev/sda", SizeBytes: 100 * gib, InstallerMedium: true}}
	_, err := ChooseDisk(disks, installspec.RootDeviceHint{}, gib)
	if err == nil || !strings.Contains(err.Error(), "installer's own medium") {
		t.Fatalf("ChooseDisk = %v, want a refusal naming the installer medium", err)
	}
	if _, err := ChooseDisk(nil, installspec.RootDeviceHint{}, gib); err == nil || !strings.Contains(err.Error(), "driver") {
		t.Errorf("ChooseDisk without disks = %v, want a hint at a missing driver", err)
	}
}

// TestScanDisks reads a test-made tree shaped like /sys/block. Only the reading of attributes is
// tested here; which disk is chosen is ChooseDisk's job, tested above, and real block devices are
// in the root tests.
func TestScanDisks(t *testing.T) {
	sys := t.TempDir()
	dev := t.TempDir()
	write := func(p, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(sys, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sys, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("vda/size", "20971520\n")
	write("vda/serial", "vd-serial\n")
	write("vda/device/model", "\n")
	write("sda/size", "1000215216\n")
	write("sda/device/type", "0\n")
	write("sda/device/model", "SAMSUNG MZ7LH480\n")
	write("sda/device/wwid", "naa.5002538e40a1b2c3\n")
	write("sda/device/vpd_pg80", "\x00\x80\x00\x0bS3Z9NB0K123")
	write("sr0/size", "2097152\n")
	write("sr0/removable", "1\n")
	write("sr0/device/type", "5\n")
	write("loop0/size", "0\n")
	write("sdb/size", "2048\n")
	write("sdb/device/type", "0\n")
	// sdb's node carries an ISO 9660 primary volume descriptor with the installer's volume ID.
	iso := make([]byte, 32768+2048)
	copy(iso[32768:], "\x01CD001\x01")
	copy(iso[32768+40:], installspec.ISOVolumeID+strings.Repeat(" ", 32-len(installspec.ISOVolumeID)))
	if err := os.WriteFile(filepath.Join(dev, "sdb"), iso, 0o600); err != nil {
		t.Fatal(err)
	}

	disks, err := ScanDisks(sys, dev)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Disk{}
	for _, d := range disks {
		got[d.Name] = d
	}
	if d := got["vda"]; d.SizeBytes != 20971520*512 || d.Serial != "vd-serial" || d.Virtual || d.CDROM {
		t.Errorf("vda = %+v", d)
	}
	if d := got["sda"]; d.Serial != "S3Z9NB0K123" || d.WWN != "naa.5002538e40a1b2c3" || d.Model != "SAMSUNG MZ7LH480" {
		t.Errorf("sda = %+v", d)
	}
	if d := got["sr0"]; !d.CDROM || !d.Removable {
		t.Errorf("sr0 = %+v", d)
	}
	if d := got["loop0"]; !d.Virtual {
		t.Errorf("loop0 = %+v, want virtual (no device link)", d)
	}
	if d := got["sdb"]; !d.InstallerMedium {
		t.Errorf("sdb = %+v, want recognized as the installer medium", d)
	}
	if got["vda"].InstallerMedium {
		t.Errorf("vda recognized as the installer medium without a node")
	}
}
