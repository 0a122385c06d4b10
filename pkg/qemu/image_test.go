package qemu

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// imageTestMBRDisk writes a raw disk of size bytes whose first sector ends in the MBR boot
// signature: the smallest thing that counts as a raw disk with a partition table.
func imageTestMBRDisk(t testing.TB, path string, size int64) string {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	diskTestWriteAt(t, path, 510, []byte{0x55, 0xaa})
	return path
}

// imageTestFile writes content to dir/name.
func imageTestFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestInspectBaseImage: self-contained qcow2 and raw disks with a partition table are accepted;
// every other file (pages, text, VMDK descriptors naming host files, other formats, qcow2 images
// naming a backing or data file, encrypted ones) is refused with ErrUnsupportedImage, and says
// what it is.
func TestInspectBaseImage(t *testing.T) {
	t.Parallel()
	diskTestNeedQemuImg(t)
	dir := t.TempDir()
	secret := imageTestFile(t, dir, "secret", "root:$6$hash:19000:0:99999:7:::\n")
	qcow2 := filepath.Join(dir, "plain.qcow2")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "qcow2", qcow2, "16M")
	qcow2v2 := filepath.Join(dir, "v2.qcow2")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", qcow2v2, "16M")
	rawMBR := imageTestMBRDisk(t, filepath.Join(dir, "mbr.raw"), 4*diskTestMiB)
	rawGPT := filepath.Join(dir, "gpt.raw")
	if err := os.Truncate(imageTestFile(t, dir, "gpt.raw", ""), 4*diskTestMiB); err != nil {
		t.Fatal(err)
	}
	diskTestWriteAt(t, rawGPT, 512, []byte("EFI PART"))

	backed := filepath.Join(dir, "backed.qcow2")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", secret, backed, "16M")
	dataFile := filepath.Join(dir, "datafile.qcow2")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.bin"), dataFile, "16M")
	// An encrypted qcow2: crypt_method 2 (LUKS) in a real header. Not made by qemu-img: its LUKS
	// key derivation benchmark fails on a busy machine ("Unable to get accurate CPU usage").
	encrypted := filepath.Join(dir, "encrypted.qcow2")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "qcow2", encrypted, "16M")
	diskTestWriteAt(t, encrypted, 32, []byte{0, 0, 0, 2})
	vmdk := filepath.Join(dir, "disk.vmdk")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "vmdk", vmdk, "16M")
	vhdx := filepath.Join(dir, "disk.vhdx")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "vhdx", vhdx, "16M")
	qcow1 := filepath.Join(dir, "disk.qcow")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "qcow", qcow1, "16M")
	link := filepath.Join(dir, "link.qcow2")
	if err := os.Symlink(qcow2, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, path string
		format     string // "" = refused
		size       int64
		want       string // in the error
	}{
		{"qcow2", qcow2, FormatQCOW2, 16 * diskTestMiB, ""},
		{"qcow2 v2", qcow2v2, FormatQCOW2, 16 * diskTestMiB, ""},
		{"raw with MBR", rawMBR, FormatRaw, 4 * diskTestMiB, ""},
		{"raw with GPT", rawGPT, FormatRaw, 4 * diskTestMiB, ""},
		{"HTML page", imageTestFile(t, dir, "page.html", "<!DOCTYPE html><html><body>Welcome to nginx!</body></html>\n"), "", 0, "looks like text"},
		{"text file", imageTestFile(t, dir, "notes.txt", strings.Repeat("not a disk\n", 200)), "", 0, "not a disk image"},
		{"VMDK descriptor", imageTestFile(t, dir, "desc.vmdk", "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"+
			"createType=\"monolithicFlat\"\nRW 8 FLAT \""+secret+"\" 0\n"), "", 0, "VMDK (descriptor)"},
		{"VMDK", vmdk, "", 0, "VMDK"},
		{"VHDX", vhdx, "", 0, "VHDX"},
		{"qcow version 1", qcow1, "", 0, "qcow version 1"},
		{"qcow2 with a backing file", backed, "", 0, "backing file"},
		{"qcow2 with an external data file", dataFile, "", 0, "external data file"},
		{"encrypted qcow2", encrypted, "", 0, "encrypted"},
		{"empty file", imageTestFile(t, dir, "empty", ""), "", 0, "it is empty"},
		{"symlink", link, "", 0, "symbolic link"},
		{"FIFO", fifo, "", 0, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			got, err := InspectBaseImage(t.Context(), tc.path)
			if tc.format != "" {
				if err != nil || got.Format != tc.format || got.VirtualSize != tc.size {
					t.Errorf("InspectBaseImage = %+v, %v; want %s of %d bytes", got, err, tc.format, tc.size)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
			if tc.name != "symlink" && !errors.Is(err, ErrUnsupportedImage) {
				t.Errorf("err = %v, want ErrUnsupportedImage", err)
			}
			if strings.Contains(err.Error(), "root:") || strings.Contains(err.Error(), "nginx") {
				t.Errorf("error quotes the file's content: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("refusing took %s", d)
			}
			t.Log(err)
		})
	}
}

// TestDetectImageFormatNamesFormats: the magic numbers of QEMU's other formats are named.
func TestDetectImageFormatNamesFormats(t *testing.T) {
	t.Parallel()
	for magic, want := range map[string]string{
		"QED\x00":      "QED",
		"LUKS\xba\xbe": "LUKS",
		"conectix":     "VHD",
		"KDMV":         "VMDK",
	} {
		head := make([]byte, 1024)
		copy(head, magic)
		head[510], head[511] = 0x55, 0xaa // a partition table does not make them raw
		if _, err := DetectImageFormat(head); !errors.Is(err, ErrUnsupportedImage) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want an unsupported %s image", magic, err, want)
		}
	}
	vdi := make([]byte, 1024)
	copy(vdi[64:], "\x7f\x10\xda\xbe")
	if _, err := DetectImageFormat(vdi); !strings.Contains(err.Error(), "VDI") {
		t.Errorf("VDI: err = %v", err)
	}
}

// TestQemuImgAlwaysToldTheFormat runs the real qemu-img through a wrapper on PATH that records
// its arguments: inspecting and overlaying a base never lets qemu-img probe a format. Not
// parallel: it changes PATH.
func TestQemuImgAlwaysToldTheFormat(t *testing.T) {
	diskTestNeedQemuImg(t)
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatal(err)
	}
	bin, dir := t.TempDir(), t.TempDir()
	logFile := filepath.Join(dir, "qemu-img.log")
	wrapper := "#!/bin/sh\nprintf '%s\\n' \"$*\" >>" + logFile + "\nexec " + qemuImg + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(bin, "qemu-img"), []byte(wrapper), 0o700); err != nil {
		t.Fatal(err)
	}
	qcow2 := diskTestBase(t, t.TempDir(), "qcow2", 8*diskTestMiB)
	raw := diskTestBase(t, t.TempDir(), "raw", 8*diskTestMiB)
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	for _, base := range []string{qcow2, raw} {
		if err := CreateOverlay(t.Context(), base, filepath.Join(dir, "disk.qcow2"), 16*diskTestMiB); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var creates int
	for _, line := range lines {
		args := strings.Fields(line)
		switch args[0] {
		case "info":
			if i := slices.Index(args, "-f"); i < 0 || args[i+1] != FormatQCOW2 {
				t.Errorf("qemu-img %s: no -f qcow2", line)
			}
		case "create":
			creates++
			if !slices.Contains(args, "-F") || !slices.Contains(args, "-f") {
				t.Errorf("qemu-img %s: backing or overlay format not given", line)
			}
		default:
			t.Errorf("unexpected qemu-img %s", line)
		}
	}
	if creates != 2 {
		t.Errorf("%d qemu-img create calls, want 2:\n%s", creates, b)
	}
}
