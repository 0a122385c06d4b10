package qemu

import (
	"crypto/sha256"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"stargate.io/stargate/internal/testreq"
)

const diskTestMiB = 1 << 20

// diskTestNeedQemuImg skips tests that need qemu-img when it is absent.
func diskTestNeedQemuImg(t testing.TB) {
	t.Helper()
	testreq.Command(t, "qemu-img", "apt-get install -y qemu-utils")
}

// diskTestRun runs a command and fails the test with its output on error.
func diskTestRun(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// diskTestBase creates a base image of the given format and virtual size. A
// raw base gets an MBR boot signature: only disks with a partition table are
// accepted as raw bases.
func diskTestBase(t testing.TB, dir, format string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, "base."+format)
	diskTestRun(t, "qemu-img", "create", "-q", "-f", format, path, strconv.FormatInt(size, 10))
	if format == "raw" {
		diskTestWriteAt(t, path, 510, []byte{0x55, 0xaa})
	}
	return path
}

// diskTestWriteAt writes b at off into the file at path.
func diskTestWriteAt(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// diskTestInfo is what the tests check in `qemu-img info --output=json`.
type diskTestInfo struct {
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	BackingFilename     string `json:"backing-filename"`
	BackingFilenameFmt  string `json:"backing-filename-format"`
	FullBackingFilename string `json:"full-backing-filename"`
}

func diskTestQemuImgInfo(t testing.TB, path string) diskTestInfo {
	t.Helper()
	out := diskTestRun(t, "qemu-img", "info", "-U", "--output=json", path)
	var info diskTestInfo
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("parsing qemu-img info: %v\n%s", err, out)
	}
	return info
}

// diskTestFingerprint is a file's content hash and mtime, to prove a base
// image was never written.
func diskTestFingerprint(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime().String() + " " + string(h.Sum(nil))
}

func TestCreateOverlay(t *testing.T) {
	t.Parallel()
	diskTestNeedQemuImg(t)
	const baseSize = 8 * diskTestMiB
	for _, tc := range []struct {
		name     string
		format   string
		size     int64
		wantSize int64
	}{
		{"raw base grown", "raw", 32 * diskTestMiB, 32 * diskTestMiB},
		{"qcow2 base grown", "qcow2", 32 * diskTestMiB, 32 * diskTestMiB},
		{"smaller than base", "qcow2", 1 * diskTestMiB, baseSize},
		{"zero means base size", "raw", 0, baseSize},
		{"rounded up to a sector", "raw", baseSize + 1, baseSize + 512},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			base := diskTestBase(t, dir, tc.format, baseSize)
			overlay := filepath.Join(dir, "disk.qcow2")

			if err := CreateOverlay(t.Context(), base, overlay, tc.size); err != nil {
				t.Fatal(err)
			}
			info := diskTestQemuImgInfo(t, overlay)
			if info.Format != "qcow2" || info.BackingFilename != base || info.BackingFilenameFmt != tc.format || info.VirtualSize != tc.wantSize {
				t.Errorf("overlay info %+v, want qcow2 backed by %s (%s) of %d bytes", info, base, tc.format, tc.wantSize)
			}
			fi, err := os.Stat(overlay)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("overlay mode %v, want 0600", fi.Mode().Perm())
			}
			if des, _ := os.ReadDir(dir); len(des) != 2 {
				t.Errorf("dir holds %d files, want base and overlay only (no temp left)", len(des))
			}
		})
	}
}

func TestCreateOverlayLeavesBaseUnchanged(t *testing.T) {
	t.Parallel()
	diskTestNeedQemuImg(t)
	testreq.Command(t, "qemu-io", "apt-get install -y qemu-utils")
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			base := diskTestBase(t, dir, format, 8*diskTestMiB)
			before := diskTestFingerprint(t, base)
			overlay := filepath.Join(dir, "disk.qcow2")
			if err := CreateOverlay(t.Context(), base, overlay, 16*diskTestMiB); err != nil {
				t.Fatal(err)
			}

			// At 1M: the first sector of a raw base holds its MBR signature.
			diskTestRun(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 1M", overlay)
			diskTestRun(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0xab 1M 1M", overlay)
			if after := diskTestFingerprint(t, base); after != before {
				t.Error("base image changed after writing into the overlay")
			}

			// Repave: a fresh overlay replaces the written one and reads the
			// base's zeros again.
			if err := CreateOverlay(t.Context(), base, overlay, 16*diskTestMiB); err != nil {
				t.Fatal(err)
			}
			diskTestRun(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0 1M 1M", overlay)
			if after := diskTestFingerprint(t, base); after != before {
				t.Error("base image changed after replacing the overlay")
			}
		})
	}
}

func TestCreateOverlayReplacesExisting(t *testing.T) {
	t.Parallel()
	diskTestNeedQemuImg(t)
	dir := t.TempDir()
	base := diskTestBase(t, dir, "raw", 4*diskTestMiB)
	overlay := filepath.Join(dir, "disk.qcow2")
	if err := os.WriteFile(overlay, []byte("not a disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CreateOverlay(t.Context(), base, overlay, 8*diskTestMiB); err != nil {
		t.Fatal(err)
	}
	if info := diskTestQemuImgInfo(t, overlay); info.Format != "qcow2" || info.BackingFilename != base {
		t.Errorf("overlay info %+v, want qcow2 backed by %s", info, base)
	}
	if fi, err := os.Stat(overlay); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("replaced overlay: stat %v, %v; want mode 0600", fi, err)
	}
}

// TestCreateOverlayRemovesStaleTemps: the temp file of a creation whose process was killed is
// removed by the next creation of the same disk, and no other file is.
func TestCreateOverlayRemovesStaleTemps(t *testing.T) {
	t.Parallel()
	diskTestNeedQemuImg(t)
	dir := t.TempDir()
	base := diskTestBase(t, dir, "raw", 4*diskTestMiB)
	overlay := filepath.Join(dir, "disk.qcow2")
	stale, other := filepath.Join(dir, ".disk.qcow2.tmp-123"), filepath.Join(dir, ".other.qcow2.tmp-123")
	for _, f := range []string{stale, other} {
		if err := os.WriteFile(f, []byte("half a disk"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := CreateOverlay(t.Context(), base, overlay, 8*diskTestMiB); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temp file %s: %v, want it removed", stale, err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another disk's temp file: %v, want it kept", err)
	}
}

// TestCreateOverlayRelativeBase cannot run in parallel: it changes the
// working directory.
func TestCreateOverlayRelativeBase(t *testing.T) {
	diskTestNeedQemuImg(t)
	dir := t.TempDir()
	base := diskTestBase(t, dir, "raw", 4*diskTestMiB)
	t.Chdir(dir)
	if err := CreateOverlay(t.Context(), "base.raw", "disk.qcow2", 0); err != nil {
		t.Fatal(err)
	}
	info := diskTestQemuImgInfo(t, filepath.Join(dir, "disk.qcow2"))
	if info.BackingFilename != base {
		t.Errorf("backing file %q, want the absolute %q", info.BackingFilename, base)
	}
}

func TestCreateOverlayErrors(t *testing.T) {
	t.Parallel()
	diskTestNeedQemuImg(t)
	dir := t.TempDir()
	base := diskTestBase(t, dir, "raw", 4*diskTestMiB)
	chained := filepath.Join(dir, "chained.qcow2")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, chained)

	for _, tc := range []struct {
		name    string
		base    string
		overlay string
		size    int64
		want    string
	}{
		{"missing base", filepath.Join(dir, "missing.img"), filepath.Join(dir, "a.qcow2"), 8 * diskTestMiB, "missing.img"},
		{"base with a backing file", chained, filepath.Join(dir, "b.qcow2"), 8 * diskTestMiB, "has a backing file"},
		{"missing overlay dir", base, filepath.Join(dir, "no", "such", "c.qcow2"), 8 * diskTestMiB, "creating overlay"},
		// qemu-img itself fails: its command line and message are in the error.
		{"size too large for qcow2", base, filepath.Join(dir, "d.qcow2"), 1 << 62, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := CreateOverlay(t.Context(), tc.base, tc.overlay, tc.size)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
			t.Log(err)
			if _, statErr := os.Stat(tc.overlay); statErr == nil {
				t.Errorf("overlay %s exists after a failure", tc.overlay)
			}
			temps, _ := filepath.Glob(filepath.Join(filepath.Dir(tc.overlay), "."+filepath.Base(tc.overlay)+".tmp-*"))
			if len(temps) != 0 {
				t.Errorf("temp files left behind: %v", temps)
			}
		})
	}
}

// A flattened overlay is one self-contained image holding the base's and the overlay's data.
func TestFlatten(t *testing.T) {
	t.Parallel()
	diskTestNeedQemuImg(t)
	dir := t.TempDir()
	base := diskTestBase(t, dir, "raw", 8*diskTestMiB)
	diskTestWriteAt(t, base, 4096, []byte("from the base"))
	overlay := filepath.Join(dir, "overlay.qcow2")
	if err := CreateOverlay(t.Context(), base, overlay, 16*diskTestMiB); err != nil {
		t.Fatal(err)
	}
	// Data written through the overlay, as a bake VM writes its installation.
	diskTestRun(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 12M 64k", overlay)
	golden := filepath.Join(dir, "golden.qcow2")
	if err := Flatten(t.Context(), overlay, golden); err != nil {
		t.Fatal(err)
	}
	info := diskTestQemuImgInfo(t, golden)
	if info.Format != "qcow2" || info.BackingFilename != "" || info.VirtualSize != 16*diskTestMiB {
		t.Errorf("golden info %+v, want a 16 MiB qcow2 without backing file", info)
	}
	if _, err := InspectBaseImage(t.Context(), golden); err != nil {
		t.Errorf("a golden image must be usable as a base: %v", err)
	}
	raw := filepath.Join(dir, "golden.raw")
	diskTestRun(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", golden, raw)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[4096:4096+13]) != "from the base" || b[12<<20] != 0x5a || b[12<<20+65535] != 0x5a {
		t.Error("the golden image lacks the base's or the overlay's data")
	}
	if fi, err := os.Stat(golden); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("golden image mode: %v %v", fi, err)
	}
	// A failure leaves nothing behind.
	if err := Flatten(t.Context(), filepath.Join(dir, "missing.qcow2"), filepath.Join(dir, "g2.qcow2")); err == nil {
		t.Error("flattening a missing disk succeeded")
	}
	// filepath.Match's * matches a leading dot: the temp files (.g2*) and g2.qcow2 alike.
	if m, _ := filepath.Glob(filepath.Join(dir, "*g2*")); len(m) > 0 {
		t.Errorf("a failed flatten left %v", m)
	}
}

// A blank machine's disk: empty, self-contained, of the size asked (rounded up to a sector),
// costing next to nothing on the host however large it is, and replaced on a second call.
func TestCreateBlankDisk(t *testing.T) {
	t.Parallel()
	diskTestNeedQemuImg(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	const size = 1 << 40 // 1 TiB: sparse, so the test host never needs it
	if err := CreateBlankDisk(t.Context(), disk, size+1); err != nil {
		t.Fatal(err)
	}
	info := diskTestQemuImgInfo(t, disk)
	if info.Format != "qcow2" || info.BackingFilename != "" || info.VirtualSize != size+512 {
		t.Errorf("blank disk info %+v, want a qcow2 of %d bytes without backing file", info, int64(size+512))
	}
	fi, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() > 4*diskTestMiB {
		t.Errorf("blank disk mode %v, %d bytes on the host; want 0600 and metadata only", fi.Mode().Perm(), fi.Size())
	}
	if err := CreateBlankDisk(t.Context(), disk, 2*diskTestMiB); err != nil {
		t.Fatal(err)
	}
	if info := diskTestQemuImgInfo(t, disk); info.VirtualSize != 2*diskTestMiB {
		t.Errorf("second blank disk of %d bytes, want it replaced by one of %d", info.VirtualSize, 2*diskTestMiB)
	}
	if des, _ := os.ReadDir(dir); len(des) != 1 {
		t.Errorf("dir holds %d files, want the disk only (no temp left)", len(des))
	}
	if err := CreateBlankDisk(t.Context(), disk, 0); err == nil {
		t.Error("a blank disk of 0 bytes was created")
	}
}
