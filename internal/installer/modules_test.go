package installer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Lines as depmod writes them for Debian's 6.1 kernel (a subset).
const testAliases = `# Aliases extracted from modules themselves.
alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_pci
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias virtio:d00000001v* virtio_net
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias scsi:t-0x00* sd_mod
alias scsi:t-0x05* sr_mod
alias pci:v00001000d0000005Dsv*sd*bc*sc*i* megaraid_sas
`

const testDeps = `kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko ` +
	`kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/libahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko: kernel/drivers/ptp/ptp.ko kernel/drivers/pps/pps_core.ko
kernel/drivers/ptp/ptp.ko: kernel/drivers/pps/pps_core.ko
kernel/drivers/pps/pps_core.ko:
`

func testIndex(t *testing.T) *ModuleIndex {
	t.Helper()
	idx, err := ParseModuleIndex(strings.NewReader(testAliases), strings.NewReader(testDeps))
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func TestModaliasMatching(t *testing.T) {
	idx := testIndex(t)
	for _, tc := range []struct {
		modalias string
		want     []string
	}{
		// QEMU's virtio-blk-pci (transitional) and the virtio device virtio_pci creates for it.
		{"pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", []string{"virtio_pci"}},
		{"virtio:d00000002v00001AF4", []string{"virtio_blk"}},
		{"virtio:d00000001v00001AF4", []string{"virtio_net"}},
		// QEMU q35's ICH9 AHCI controller: matched by class 01/06/01, whatever the vendor.
		{"pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", []string{"ahci"}},
		{"pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", []string{"nvme"}},
		{"pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00", []string{"e1000e"}},
		{"scsi:t-0x00", []string{"sd_mod"}},
		// sr_mod is in modules.alias but not shipped (not in modules.dep): nothing to load.
		{"scsi:t-0x05", nil},
		// A PCI bridge: no driver module.
		{"pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00", nil},
		// Matching is exact on case, as modprobe's fnmatch is.
		{"PCI:V00008086D000010D3SV00008086SD0000A01FBC02SC00I00", nil},
	} {
		if got := idx.Match(tc.modalias); !slices.Equal(got, tc.want) {
			t.Errorf("Match(%s) = %v, want %v", tc.modalias, got, tc.want)
		}
	}
}

func TestLoadOrderPutsDependenciesFirst(t *testing.T) {
	idx := testIndex(t)
	order, err := idx.LoadOrder("ahci")
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, f := range order {
		pos[moduleName(f)] = i
	}
	if len(order) != 5 {
		t.Errorf("LoadOrder(ahci) = %v, want 5 modules each once", order)
	}
	for _, before := range [][2]string{{"scsi_common", "scsi_mod"}, {"scsi_mod", "libata"}, {"libata", "libahci"}, {"libahci", "ahci"}} {
		if pos[before[0]] >= pos[before[1]] {
			t.Errorf("LoadOrder(ahci) = %v: %s must come before %s", order, before[0], before[1])
		}
	}
	// Names with - and _ are the same module.
	if order, err := idx.LoadOrder("nvme_core"); err != nil || len(order) != 1 || order[0] != "kernel/drivers/nvme/host/nvme-core.ko" {
		t.Errorf("LoadOrder(nvme_core) = %v, %v", order, err)
	}
}

func TestLoadOrderRefusesBrokenIndexes(t *testing.T) {
	cyclic, err := ParseModuleIndex(strings.NewReader(""), strings.NewReader("a.ko: b.ko\nb.ko: a.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cyclic.LoadOrder("a"); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("LoadOrder on a cycle = %v, want a cycle error", err)
	}
	missing, err := ParseModuleIndex(strings.NewReader(""), strings.NewReader("a.ko: gone.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := missing.LoadOrder("a"); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("LoadOrder with a missing dependency = %v, want an error naming it", err)
	}
	for _, bad := range []struct{ alias, dep string }{
		{"alias only-two-fields\n", ""},
		{"alias pci:[ x\n", ""},
		{"", "no colon here\n"},
	} {
		if _, err := ParseModuleIndex(strings.NewReader(bad.alias), strings.NewReader(bad.dep)); err == nil {
			t.Errorf("ParseModuleIndex(%q, %q) accepted it", bad.alias, bad.dep)
		}
	}
}

// TestDeviceModaliases reads modalias files from a test-made tree shaped like /sys/devices.
func TestDeviceModaliases(t *testing.T) {
	root := t.TempDir()
	for p, alias := range map[string]string{
		"pci0000:00/0000:00:02.0/modalias":          "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n",
		"pci0000:00/0000:00:02.0/virtio0/modalias":  "virtio:d00000002v00001AF4\n",
		"pci0000:00/0000:00:1f.2/modalias":          "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01\n",
		"platform/serial8250/modalias":              "platform:serial8250\n",
		"pci0000:00/0000:00:1f.2/empty/modalias":    "\n",
		"pci0000:00/0000:00:1f.2/not-an-alias/name": "x\n",
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(alias), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := DeviceModaliases(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
		"pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
		"platform:serial8250",
		"virtio:d00000002v00001AF4",
	}
	if !slices.Equal(got, want) {
		t.Errorf("DeviceModaliases = %v, want %v", got, want)
	}
}
