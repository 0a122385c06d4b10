package installer

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"
)

// mbrDisk returns a disk file of diskSize bytes whose first sector is an MBR with the given
// partitions (type, start sector, sectors).
func mbrDisk(t *testing.T, diskSize int64, parts ...[3]uint32) (*os.File, []byte) {
	t.Helper()
	f := tempDevice(t, diskSize)
	mbr := make([]byte, 512)
	for i, p := range parts {
		e := mbr[446+16*i:]
		e[4] = byte(p[0])
		binary.LittleEndian.PutUint32(e[8:], p[1])
		binary.LittleEndian.PutUint32(e[12:], p[2])
	}
	mbr[510], mbr[511] = 0x55, 0xaa
	if _, err := f.WriteAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	return f, mbr
}

func TestWriteSeedPartitionRefuses(t *testing.T) {
	files := map[string][]byte{"meta-data": []byte("instance-id: x\n"), "user-data": nil}
	for _, tc := range []struct {
		name      string
		diskSize  int64
		imageSize int64
		parts     [][3]uint32
		noSig     bool
		want      string
	}{
		{"all four MBR slots used", 64 * mib, 8 * mib,
			[][3]uint32{{0x83, 2048, 100}, {0x83, 4096, 100}, {0x83, 6144, 100}, {0x83, 8192, 100}}, false, "no free primary slot"},
		{"no room after the image", 20 * mib, 16 * mib, [][3]uint32{{0x83, 2048, 30000}}, false, "no room"},
		{"a partition reaches into the seed's place", 64 * mib, 8 * mib, [][3]uint32{{0x83, 2048, 128000}}, false, "no room"},
		{"no partition table", 64 * mib, 8 * mib, nil, true, "no partition table"},
		{"MBR announces a GPT that is not there", 64 * mib, 8 * mib, [][3]uint32{{0xee, 1, 100000}}, false, "no GPT header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk, _ := mbrDisk(t, tc.diskSize, tc.parts...)
			if tc.noSig {
				if _, err := disk.WriteAt([]byte{0, 0}, 510); err != nil {
					t.Fatal(err)
				}
			}
			_, err := WriteSeedPartition(disk, tc.diskSize, tc.imageSize, 512, files, t.TempDir())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("WriteSeedPartition = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestWriteSeedPartitionMBRTakesTheFirstFreeSlot(t *testing.T) {
	// Slot 1 is free, slot 2 holds the root: the seed takes slot 1 and the end of the disk; the
	// MBR's boot code and disk signature stay.
	disk, before := mbrDisk(t, 64*mib, [3]uint32{}, [3]uint32{0x83, 2048, 16384})
	copy(before[:440], strings.Repeat("boot code ", 44))
	binary.LittleEndian.PutUint32(before[440:], 0xdeadbeef)
	if _, err := disk.WriteAt(before, 0); err != nil {
		t.Fatal(err)
	}
	part, err := WriteSeedPartition(disk, 64*mib, 9*mib, 512, map[string][]byte{"meta-data": []byte("x")}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if part.Number != 1 || part.Start != 56*mib || part.Size != SeedPartitionBytes {
		t.Errorf("seed partition = %+v, want number 1 at %d", part, 56*mib)
	}
	after := make([]byte, 512)
	if _, err := disk.ReadAt(after, 0); err != nil {
		t.Fatal(err)
	}
	if string(after[:446]) != string(before[:446]) {
		t.Error("boot code or disk signature changed")
	}
	if string(after[446+16:446+32]) != string(before[446+16:446+32]) {
		t.Error("the image's partition entry changed")
	}
	if after[446+4] != 0x83 || binary.LittleEndian.Uint32(after[446+8:]) != uint32(56*mib/512) {
		t.Errorf("seed entry = % x", after[446:462])
	}
}

func TestWriteSeedPartitionRefusesOddSectors(t *testing.T) {
	disk, _ := mbrDisk(t, 64*mib, [3]uint32{0x83, 2048, 100})
	if _, err := WriteSeedPartition(disk, 64*mib, mib, 520, nil, t.TempDir()); err == nil {
		t.Error("accepted 520-byte sectors")
	}
	if _, err := WriteSeedPartition(disk, 64*mib, mib, 4096, map[string][]byte{"meta-data": []byte("x")}, t.TempDir()); err == nil ||
		!strings.Contains(err.Error(), "not supported") {
		t.Errorf("MBR on 4096-byte sectors = %v, want a refusal", err)
	}
}
