package cloudinit

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkWriteNoCloudISO measures building a seed ISO with a 64 KiB user-data.
func BenchmarkWriteNoCloudISO(b *testing.B) {
	path := filepath.Join(b.TempDir(), "seed.iso")
	cfg := Config{InstanceID: "i-bench", Hostname: "bench", VendorData: ReadinessVendorData("i-bench"),
		UserData: []byte("#cloud-config\nwrite_files:\n  - path: /x\n    content: " + strings.Repeat("x", 64<<10) + "\n"),
		Network:  &GuestNetwork{MAC: "52:54:00:00:00:01", Address: netip.MustParsePrefix("192.168.100.11/24"), Gateway: netip.MustParseAddr("192.168.100.1")}}
	for b.Loop() {
		if err := WriteNoCloudISO(path, cfg); err != nil {
			b.Fatal(err)
		}
	}
}
