package installer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/installspec"
)

// The tests in this file write real images to real block devices (loop devices) and check the
// result with util-linux and e2fsprogs, the way a booting guest's tools will see it.

const mib = int64(1) << 20

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testreq.Need(t, "root (losetup, mount)", "run the tests as root: `sudo go test ./internal/installer/`")
	}
	for cmd, pkg := range map[string]string{"losetup": "mount", "sfdisk": "fdisk", "blkid": "util-linux", "mkfs.ext4": "e2fsprogs"} {
		testreq.Command(t, cmd, "sudo apt-get install -y "+pkg)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// loopDevice attaches a sparse file of size bytes to a free loop device, detached at cleanup.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	backing := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", backing))
	t.Cleanup(func() { _ = exec.Command("losetup", "--detach", dev).Run() })
	return dev
}

// makeImage builds a raw disk image with the given sfdisk label and an ext4 root file system
// (label rootfs, holding /hello) in its last partition; it returns the image and the root
// partition's byte offset.
func makeImage(t *testing.T, label string) ([]byte, int64) {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "image.raw")
	const size = 40 * mib
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	layout := "label: dos\nstart=2048, size=8M, type=ef\nstart=18432, type=83, bootable\n"
	if label == "gpt" {
		layout = "label: gpt\nstart=2048, size=8M, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n" +
			"start=18432, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n"
	}
	cmd := exec.Command("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", img)
	cmd.Stdin = strings.NewReader(layout)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	const rootStart = 18432 * 512
	rootSize := sfdiskJSON(t, img).PartitionTable.Partitions[1].Size * 512 // sfdisk aligns its end
	rootfs := filepath.Join(dir, "root")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "hello"), []byte("from the image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fs := filepath.Join(dir, "root.ext4")
	run(t, "mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", rootfs, fs, itoa(rootSize/1024)+"k")
	image, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	fsBytes, err := os.ReadFile(fs)
	if err != nil {
		t.Fatal(err)
	}
	copy(image[rootStart:], fsBytes)
	return image, rootStart
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

type sfdiskDump struct {
	PartitionTable struct {
		Label      string `json:"label"`
		LastLBA    int64  `json:"lastlba"`
		Partitions []struct {
			Node  string `json:"node"`
			Start int64  `json:"start"`
			Size  int64  `json:"size"`
			Type  string `json:"type"`
			Name  string `json:"name"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

func TestImageAndSeedOnLoopDevice(t *testing.T) {
	needRoot(t)
	for _, label := range []string{"gpt", "dos"} {
		t.Run(label, func(t *testing.T) { testImageAndSeed(t, label) })
	}
}

func testImageAndSeed(t *testing.T, label string) {
	image, rootStart := makeImage(t, label)
	before := sfdiskJSON(t, writeTemp(t, image))
	srv := serveImage(image)
	defer srv.Close()

	const diskSize = 200 * mib
	devPath := loopDevice(t, diskSize)
	dev, err := os.OpenFile(devPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	w := &ImageWriter{
		Source:   ImageSource{Client: srv.Client(), URL: srv.URL, ChunkedSHA256: installspec.DigestOf(image), Size: int64(len(image))},
		Capacity: diskSize - seedReserve,
	}
	written, err := w.Write(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"meta-data":      []byte("instance-id: i-loop\nlocal-hostname: loop\n"),
		"user-data":      []byte("#cloud-config\nfinal_message: hi\n"),
		"network-config": []byte("version: 2\n"),
	}
	part, err := WriteSeedPartition(dev, diskSize, written, 512, files, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	wantTable := map[string]string{"gpt": "gpt", "dos": "mbr"}[label]
	if part.Table != wantTable || part.Number != 3 || part.Start+part.Size > diskSize || part.Start < int64(len(image)) {
		t.Fatalf("seed partition = %+v, want partition 3 of the %s after the image, within the disk", part, wantTable)
	}

	after := checkInstalledDisk(t, devPath, before, part, files)

	// The root file system is intact: e2fsck passes and it mounts with its file.
	rootSize := after.PartitionTable.Partitions[1].Size * 512
	rootDev := strings.TrimSpace(run(t, "losetup", "--find", "--show", "--read-only", "--offset", itoa(rootStart),
		"--sizelimit", itoa(rootSize), devPath))
	defer func() { _ = exec.Command("losetup", "--detach", rootDev).Run() }()
	run(t, "e2fsck", "-fn", rootDev)
	mnt := t.TempDir()
	run(t, "mount", "-o", "ro", rootDev, mnt)
	hello, err := os.ReadFile(filepath.Join(mnt, "hello"))
	run(t, "umount", mnt)
	if err != nil || string(hello) != "from the image\n" {
		t.Errorf("/hello on the installed root = %q, %v", hello, err)
	}
}

func TestDigestMismatchWipesLoopDevice(t *testing.T) {
	needRoot(t)
	image, _ := makeImage(t, "gpt")
	srv := serveImage(image)
	defer srv.Close()
	devPath := loopDevice(t, 100*mib)
	dev, err := os.OpenFile(devPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	w := &ImageWriter{
		Source:   ImageSource{Client: srv.Client(), URL: srv.URL, ChunkedSHA256: strings.Repeat("ab", 32)},
		Capacity: 90 * mib,
	}
	if _, err := w.Write(context.Background(), dev); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Write = %v, want ErrDigestMismatch", err)
	}
	head := make([]byte, mib)
	if _, err := dev.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head, make([]byte, mib)) {
		t.Error("the first MiB still holds data after a digest mismatch")
	}
	// Nothing recognizes a partition table any more (the backup GPT at the image's end is gone too).
	out, _ := exec.Command("blkid", "--probe", devPath).CombinedOutput()
	if strings.Contains(string(out), "PTTYPE") {
		t.Errorf("blkid still finds a partition table after the wipe: %s", out)
	}
	// The image's root file system beyond the wiped ranges is untouched: only the boot-relevant
	// ranges are cleared, the rest of the disk is not rewritten.
	mid := make([]byte, 4096)
	if _, err := dev.ReadAt(mid, 18432*512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(image[18432*512:18432*512+4096], mid) {
		t.Error("the middle of the image was cleared as well")
	}
}

// checkInstalledDisk checks a disk (device or file) after an install: util-linux reads a
// consistent partition table in which the image's partitions are unchanged and the seed partition
// is where part says; blkid finds the image's root (label rootfs) and the seed (label cidata); the
// seed file system holds files. It returns the table as sfdisk reads it.
func checkInstalledDisk(t *testing.T, devPath string, before sfdiskDump, part SeedPartition, files map[string][]byte) sfdiskDump {
	t.Helper()
	st, err := os.Stat(devPath)
	if err != nil {
		t.Fatal(err)
	}
	diskSize := st.Size()
	if st.Mode()&os.ModeDevice != 0 {
		diskSize, err = strconv.ParseInt(strings.TrimSpace(run(t, "blockdev", "--getsize64", devPath)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
	}
	dev, err := os.Open(devPath)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	// util-linux reads a consistent table: no complaint (a GPT's backup header must now be at the
	// end of the disk, the protective MBR must cover the disk), the image's partitions unchanged.
	out, err := exec.Command("sfdisk", "--list", devPath).CombinedOutput()
	if err != nil {
		t.Fatalf("sfdisk --list: %v\n%s", err, out)
	}
	for _, complaint := range []string{"mismatch", "not on the end", "corrupt", "invalid", "differ"} {
		if strings.Contains(strings.ToLower(string(out)), complaint) {
			t.Errorf("sfdisk --list complains (%q):\n%s", complaint, out)
		}
	}
	if out, err := exec.Command("sfdisk", "--verify", devPath).CombinedOutput(); err != nil {
		t.Errorf("sfdisk --verify: %v\n%s", err, out)
	}
	after := sfdiskJSON(t, devPath)
	if len(after.PartitionTable.Partitions) != 3 {
		t.Fatalf("partitions after = %+v, want the image's 2 and cidata", after.PartitionTable.Partitions)
	}
	for i, p := range before.PartitionTable.Partitions {
		q := after.PartitionTable.Partitions[i]
		if p.Start != q.Start || p.Size != q.Size || p.Type != q.Type || p.Name != q.Name {
			t.Errorf("partition %d changed: %+v -> %+v", i+1, p, q)
		}
	}
	seed := after.PartitionTable.Partitions[2]
	if seed.Start*512 != part.Start || seed.Size*512 != part.Size {
		t.Errorf("cidata partition in the table = %+v, want start %d size %d bytes", seed, part.Start, part.Size)
	}
	if part.Table == "gpt" && (seed.Name != SeedLabel || after.PartitionTable.LastLBA != diskSize/512-34) {
		t.Errorf("GPT: cidata name %q, last usable LBA %d; want %q and %d (the table grown to the disk)",
			seed.Name, after.PartitionTable.LastLBA, SeedLabel, diskSize/512-34)
	}

	// blkid finds both file systems by label, as the guest's cloud-init and fstab will.
	probe := func(offset int64) string {
		return run(t, "blkid", "--probe", "--offset", itoa(offset), "--output", "export", devPath)
	}
	if got := probe(before.PartitionTable.Partitions[1].Start * 512); !strings.Contains(got, "LABEL=rootfs") || !strings.Contains(got, "TYPE=ext4") {
		t.Errorf("blkid at the root partition: %s", got)
	}
	if got := probe(part.Start); !strings.Contains(got, "LABEL=cidata") || !strings.Contains(got, "TYPE=iso9660") {
		t.Errorf("blkid at the cidata partition: %s", got)
	}

	// The seed: this host's kernel has no iso9660 driver, so go-diskfs reads it back.
	seedCopy, err := os.Create(filepath.Join(t.TempDir(), "seed.iso"))
	if err != nil {
		t.Fatal(err)
	}
	defer seedCopy.Close()
	if _, err := io.Copy(seedCopy, io.NewSectionReader(dev, part.Start, part.Size)); err != nil {
		t.Fatal(err)
	}
	seedFS, err := iso9660.Read(file.New(seedCopy, true), part.Size, 0, 2048)
	if err != nil {
		t.Fatalf("reading the seed file system: %v", err)
	}
	if l := strings.TrimRight(seedFS.Label(), " \x00"); l != SeedLabel {
		t.Errorf("seed volume label = %q, want %q", l, SeedLabel)
	}
	for name, want := range files {
		f, err := seedFS.OpenFile("/"+name, os.O_RDONLY)
		if err != nil {
			t.Errorf("seed file %s: %v", name, err)
			continue
		}
		got, err := io.ReadAll(f)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("seed file %s = %q, %v; want %q", name, got, err, want)
		}
	}
	return after
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "copy.raw")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func sfdiskJSON(t *testing.T, path string) sfdiskDump {
	t.Helper()
	var d sfdiskDump
	if err := json.Unmarshal([]byte(run(t, "sfdisk", "--json", path)), &d); err != nil {
		t.Fatal(err)
	}
	return d
}
