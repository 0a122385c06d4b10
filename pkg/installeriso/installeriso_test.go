package installeriso

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/installspec"
)

func testSpec() *installspec.Spec {
	return &installspec.Spec{
		APIVersion: installspec.APIVersion,
		Image:      installspec.Image{URL: "http://10.0.2.2:8080/i/abc.raw", ChunkedSHA256: strings.Repeat("0f", 32)},
		Network:    installspec.Network{MAC: "52:54:00:12:34:56", Address: "10.0.2.15/24", Gateway: "10.0.2.2"},
		Seed:       installspec.Seed{MetaData: []byte("instance-id: i-1\n"), UserData: []byte("#cloud-config\n")},
		Callback:   installspec.Callback{URL: "http://10.0.2.2:8080/cb", Token: strings.Repeat("k", 40)},
	}
}

// fakeBase writes an ISO shaped like build.sh's (volume ID, a kernel-sized file, the blank slot)
// with go-diskfs; the tests of the real ISO are below.
func fakeBase(t *testing.T, volumeID string, slot []byte) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "base.iso")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fs, err := iso9660.Create(file.New(f, false), 0, 0, 2048, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Mkdir("/boot"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Mkdir("/stargate"); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{
		"/boot/vmlinuz": bytes.Repeat([]byte("kernel"), 100000),
		SlotPath:        slot,
	} {
		w, err := fs.OpenFile(name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(content); err != nil {
			t.Fatal(err)
		}
	}
	if err := fs.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: volumeID}); err != nil {
		t.Fatal(err)
	}
	return path
}

// readSlotSpec reads the Spec a Medium carries the way the kernel finds it: the cpio archive at
// the start of the slot file, as the ISO's directory locates it.
func readSlotSpec(t *testing.T, isoPath string) (*cpio.Header, []byte) {
	t.Helper()
	f, err := os.Open(isoPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	fs, err := iso9660.Read(file.New(f, true), st.Size(), 0, 2048)
	if err != nil {
		t.Fatal(err)
	}
	slot, err := fs.OpenFile(SlotPath, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	r := cpio.NewReader(slot)
	for {
		h, err := r.Next()
		if err != nil {
			t.Fatalf("no %s in the slot's archive: %v", installspec.ConfigPath, err)
		}
		if "/"+h.Name == installspec.ConfigPath {
			doc, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			return h, doc
		}
	}
}

func TestMediumCarriesTheSpec(t *testing.T) {
	basePath := fakeBase(t, installspec.ISOVolumeID, make([]byte, SlotBytes))
	baseBytes, err := os.ReadFile(basePath)
	if err != nil {
		t.Fatal(err)
	}
	base, err := OpenBase(basePath)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	m, err := base.NewMedium(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "op.iso")
	if err := m.WriteFile(out); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() != int64(len(baseBytes)) {
		t.Errorf("medium file: mode %v, %d bytes; want 0600 and the base's %d bytes", st.Mode().Perm(), st.Size(), len(baseBytes))
	}
	h, doc := readSlotSpec(t, out)
	if h.Mode.Perm() != 0o600 || !h.Mode.IsRegular() || h.Uid != 0 {
		t.Errorf("spec file in the archive: mode %v uid %d, want a regular file 0600 of root", h.Mode, h.Uid)
	}
	got, err := installspec.Decode(bytes.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	if got.Callback.Token != testSpec().Callback.Token {
		t.Errorf("decoded spec = %+v", got)
	}

	// Outside the slot the medium is the base, byte for byte; reads across the slot's edges and
	// past the end behave as io.ReaderAt requires.
	medium, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	off := base.slotOffset
	if !bytes.Equal(medium[:off], baseBytes[:off]) || !bytes.Equal(medium[off+SlotBytes:], baseBytes[off+SlotBytes:]) {
		t.Error("the medium differs from the base outside the config slot")
	}
	edge := make([]byte, 100)
	if n, err := m.ReadAt(edge, off-50); n != 100 || err != nil || !bytes.Equal(edge, medium[off-50:off+50]) {
		t.Errorf("ReadAt across the slot's start = %d, %v", n, err)
	}
	if n, err := m.ReadAt(edge, m.Size()-10); n != 10 || !errors.Is(err, io.EOF) {
		t.Errorf("ReadAt past the end = %d, %v; want 10, EOF", n, err)
	}

	// A medium is no base: its slot is taken.
	if _, err := OpenBase(out); err == nil || !strings.Contains(err.Error(), "not blank") {
		t.Errorf("OpenBase(medium) = %v, want a refusal", err)
	}
}

func TestOpenBaseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, volumeID string
		slot           []byte
		want           string
	}{
		{"another ISO", "CIDATA", make([]byte, SlotBytes), "not an installer ISO"},
		{"slot of another size", installspec.ISOVolumeID, make([]byte, 4096), "want"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := OpenBase(fakeBase(t, tc.volumeID, tc.slot)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("OpenBase = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	base, err := OpenBase(fakeBase(t, installspec.ISOVolumeID, make([]byte, SlotBytes)))
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	bad := testSpec()
	bad.Image.URL = "ftp://x/y"
	if _, err := base.NewMedium(bad); err == nil {
		t.Error("NewMedium accepted an invalid spec")
	}
}

// TestRealBaseISO checks the ISO build.sh made (STARGATE_INSTALLER_ISO): it opens as a base, and a
// medium made from it keeps the boot structures (El Torito entries and partition table) and
// carries the spec where GRUB's second initrd is.
func TestRealBaseISO(t *testing.T) {
	path := os.Getenv("STARGATE_INSTALLER_ISO")
	if path == "" {
		testreq.Need(t, "STARGATE_INSTALLER_ISO (the base installer ISO)", "STARGATE_INSTALLER_ISO=$(hack/installer-iso/build.sh)")
	}
	xorriso := testreq.Command(t, "xorriso", "sudo apt-get install -y xorriso")
	base, err := OpenBase(path)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	m, err := base.NewMedium(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "op.iso")
	if err := m.WriteFile(out); err != nil {
		t.Fatal(err)
	}
	_, doc := readSlotSpec(t, out)
	if _, err := installspec.Decode(bytes.NewReader(doc)); err != nil {
		t.Fatal(err)
	}
	report := func(iso string) string {
		b, err := exec.Command(xorriso, "-indev", iso, "-report_el_torito", "plain", "-report_system_area", "plain").CombinedOutput()
		if err != nil {
			t.Fatalf("xorriso: %v\n%s", err, b)
		}
		var keep []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "El Torito") || strings.HasPrefix(l, "System area") || strings.HasPrefix(l, "GPT") || strings.HasPrefix(l, "MBR") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	before, after := report(path), report(out)
	if !strings.Contains(before, "El Torito boot img") || !strings.Contains(before, "GPT") {
		t.Fatalf("the base ISO lacks El Torito images or a GPT:\n%s", before)
	}
	if before != after {
		t.Errorf("boot structures changed:\nbase:\n%s\nmedium:\n%s", before, after)
	}
}
