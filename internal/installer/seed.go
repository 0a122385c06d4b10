package installer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"
)

// SeedLabel is the label cloud-init's NoCloud datasource looks for.
const SeedLabel = "cidata"

// SeedPartitionBytes is the size of the cidata partition: the seed is at most
// installspec.MaxSeedBytes, and ISO 9660 adds well under 1 MiB of structure.
const SeedPartitionBytes = 8 << 20

// partitionAlign aligns the cidata partition as partitioning tools do.
const partitionAlign = 1 << 20

// mbrLimitBytes is the end of what an MBR partition entry can address with 512-byte sectors.
const mbrLimitBytes = int64(1<<32) * 512

// gptReservedSectors is what the backup GPT takes at the end of the disk: its header and a
// 128-entry partition array (16 KiB).
const gptReservedSectors = 1 + 128*128/512

// SeedPartition says where the cidata partition went.
type SeedPartition struct {
	Table  string // "gpt" or "mbr"
	Number int    // partition number, as in /dev/vda<Number>
	Start  int64  // byte offset
	Size   int64  // bytes
}

// WriteSeedPartition adds a partition labelled cidata holding an ISO 9660 file system with the
// NoCloud files to the end of a disk that just received an image of imageSize bytes, and returns
// where it went. The image's own partitions stay as they are:
//   - MBR: the cidata partition takes a free primary slot and the last aligned 8 MiB below the end
//     of the disk (or below 2 TiB, what MBR can address).
//   - GPT: the backup header and partition array move from the end of the image to the end of the
//     disk (as `sgdisk -e` does), the stale backup header is cleared, and the cidata partition takes
//     the last aligned 8 MiB before the backup array; a protective MBR is updated to the new size.
//
// Free space between the image's last partition and cidata stays free, so cloud-init's growpart
// can still grow a last root partition up to the seed. sectorSize is the disk's logical block size.
func WriteSeedPartition(dev *os.File, diskSize, imageSize int64, sectorSize int, files map[string][]byte, workDir string) (SeedPartition, error) {
	if sectorSize != 512 && sectorSize != 4096 {
		return SeedPartition{}, fmt.Errorf("unsupported logical sector size %d", sectorSize)
	}
	iso, err := seedISO(files, workDir)
	if err != nil {
		return SeedPartition{}, err
	}
	if int64(len(iso)) > SeedPartitionBytes {
		return SeedPartition{}, fmt.Errorf("the seed file system takes %d bytes, more than the %d of its partition", len(iso), SeedPartitionBytes)
	}
	kind, err := tableKind(dev, sectorSize)
	if err != nil {
		return SeedPartition{}, err
	}
	var part SeedPartition
	switch kind {
	case "gpt":
		part, err = addGPTSeedPartition(dev, diskSize, imageSize, sectorSize)
	default:
		part, err = addMBRSeedPartition(dev, diskSize, imageSize, sectorSize)
	}
	if err != nil {
		return SeedPartition{}, err
	}
	// The whole partition is written, so nothing of the disk's old data shows through; until it
	// is, the new partition carries no cidata label that cloud-init could half-read.
	padded := make([]byte, part.Size)
	copy(padded, iso)
	if _, err := dev.WriteAt(padded, part.Start); err != nil {
		return SeedPartition{}, fmt.Errorf("writing the seed file system at byte %d: %w", part.Start, err)
	}
	if err := dev.Sync(); err != nil {
		return SeedPartition{}, fmt.Errorf("syncing the seed partition: %w", err)
	}
	return part, nil
}

// tableKind tells a GPT (protective or hybrid MBR with an 0xEE entry, "EFI PART" at LBA 1) from an MBR.
func tableKind(dev io.ReaderAt, sectorSize int) (string, error) {
	sector0 := make([]byte, 512)
	if _, err := dev.ReadAt(sector0, 0); err != nil {
		return "", fmt.Errorf("reading the image's partition table: %w", err)
	}
	if sector0[510] != 0x55 || sector0[511] != 0xaa {
		return "", errors.New("the image has no partition table (no MBR signature in its first sector): " +
			"a raw whole-disk image with an MBR or GPT is needed to add the cidata partition")
	}
	header := make([]byte, 8)
	if _, err := dev.ReadAt(header, int64(sectorSize)); err != nil {
		return "", fmt.Errorf("reading the image's GPT header: %w", err)
	}
	for i := range 4 {
		if sector0[446+16*i+4] == 0xee {
			if string(header) != "EFI PART" {
				return "", fmt.Errorf("the image's MBR announces a GPT (type 0xee) but LBA 1 (byte %d on this disk's %d-byte sectors) "+
					"holds no GPT header: an image made for another sector size?", sectorSize, sectorSize)
			}
			return "gpt", nil
		}
	}
	return "mbr", nil
}

// seedStart returns where the cidata partition starts when the usable area of the disk ends at
// byte end and the image and its partitions end at imageSize and lastPartitionEnd.
func seedStart(end, imageSize, lastPartitionEnd int64) (int64, error) {
	start := (end - SeedPartitionBytes) / partitionAlign * partitionAlign
	floor := max(imageSize, lastPartitionEnd)
	if start < floor {
		return 0, fmt.Errorf("no room for the %d-byte cidata partition: the image and its partitions end at byte %d, "+
			"the disk's usable space at byte %d (choose a disk at least %d bytes larger than the image)",
			SeedPartitionBytes, floor, end, SeedPartitionBytes+2*partitionAlign)
	}
	return start, nil
}

func addMBRSeedPartition(dev *os.File, diskSize, imageSize int64, sectorSize int) (SeedPartition, error) {
	if sectorSize != 512 {
		return SeedPartition{}, fmt.Errorf("an MBR image on a disk with %d-byte sectors is not supported", sectorSize)
	}
	table, err := mbr.Read(dev, sectorSize, sectorSize)
	if err != nil {
		return SeedPartition{}, fmt.Errorf("reading the image's MBR: %w", err)
	}
	slot := -1
	var lastEnd int64
	for i, p := range table.Partitions {
		if p.Type == mbr.Empty {
			if slot < 0 {
				slot = i
			}
			continue
		}
		lastEnd = max(lastEnd, (int64(p.Start)+int64(p.Size))*512)
	}
	if slot < 0 {
		return SeedPartition{}, errors.New("the image's MBR has no free primary slot for the cidata partition (all 4 are used)")
	}
	start, err := seedStart(min(diskSize, mbrLimitBytes), imageSize, lastEnd)
	if err != nil {
		return SeedPartition{}, err
	}
	table.Partitions[slot] = &mbr.Partition{
		Type:  mbr.Linux,
		Start: uint32(start / 512),
		Size:  uint32(SeedPartitionBytes / 512),
	}
	if err := table.Write(dev, diskSize); err != nil {
		return SeedPartition{}, fmt.Errorf("writing the MBR with the cidata partition: %w", err)
	}
	return SeedPartition{Table: "mbr", Number: slot + 1, Start: start, Size: SeedPartitionBytes}, nil
}

func addGPTSeedPartition(dev *os.File, diskSize, imageSize int64, sectorSize int) (SeedPartition, error) {
	table, err := gpt.Read(dev, sectorSize, sectorSize)
	if err != nil {
		return SeedPartition{}, fmt.Errorf("reading the image's GPT: %w", err)
	}
	sector := int64(sectorSize)
	oldBackup := int64(table.TotalSize())/sector - 1 // LBA of the image's backup header
	if (oldBackup+1)*sector > diskSize {
		return SeedPartition{}, fmt.Errorf("the image's GPT describes a %d-byte disk, larger than this %d-byte disk", (oldBackup+1)*sector, diskSize)
	}
	used := map[int]bool{}
	var lastEnd int64
	for _, p := range table.Partitions {
		used[p.Index] = true
		lastEnd = max(lastEnd, (int64(p.End)+1)*sector)
	}
	number := 1
	for used[number] {
		number++
	}
	if number > 128 {
		return SeedPartition{}, errors.New("the image's GPT has no free entry for the cidata partition")
	}
	end := diskSize/sector*sector - gptReservedSectors*sector
	start, err := seedStart(end, imageSize, lastEnd)
	if err != nil {
		return SeedPartition{}, err
	}
	table.Resize(uint64(diskSize / sector * sector))
	table.Partitions = append(table.Partitions, &gpt.Partition{
		Index: number,
		Start: uint64(start / sector),
		End:   uint64((start+SeedPartitionBytes)/sector - 1),
		Type:  gpt.LinuxFilesystem,
		Name:  SeedLabel,
	})
	sort.Slice(table.Partitions, func(i, j int) bool { return table.Partitions[i].Index < table.Partitions[j].Index })
	if err := table.Write(dev, diskSize/sector*sector); err != nil {
		return SeedPartition{}, fmt.Errorf("writing the GPT with the cidata partition: %w", err)
	}
	newBackup := diskSize/sector - 1
	if oldBackup < newBackup {
		// A second "EFI PART" header in the middle of the disk would confuse tools that look for one.
		if _, err := dev.WriteAt(make([]byte, sectorSize), oldBackup*sector); err != nil {
			return SeedPartition{}, fmt.Errorf("clearing the image's old backup GPT header: %w", err)
		}
	}
	return SeedPartition{Table: "gpt", Number: number, Start: start, Size: SeedPartitionBytes}, nil
}

// seedISO builds the seed file system in memory: an ISO 9660 image labelled cidata, with Rock Ridge
// and Joliet names so meta-data and user-data keep their names.
func seedISO(files map[string][]byte, workDir string) ([]byte, error) {
	tmp, err := os.CreateTemp(workDir, "cidata-*.iso")
	if err != nil {
		return nil, fmt.Errorf("creating the seed image: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	workspace, err := os.MkdirTemp(workDir, "cidata-ws-*")
	if err != nil {
		return nil, fmt.Errorf("creating the seed image's workspace: %w", err)
	}
	defer os.RemoveAll(workspace)
	fs, err := iso9660.Create(file.New(tmp, false), 0, 0, 2048, workspace)
	if err != nil {
		return nil, fmt.Errorf("creating the seed file system: %w", err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f, err := fs.OpenFile("/"+name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return nil, fmt.Errorf("adding %s to the seed: %w", name, err)
		}
		if _, err := f.Write(files[name]); err != nil {
			return nil, fmt.Errorf("writing %s to the seed: %w", name, err)
		}
	}
	if err := fs.Finalize(iso9660.FinalizeOptions{RockRidge: true, Joliet: true, VolumeIdentifier: SeedLabel}); err != nil {
		return nil, fmt.Errorf("finalizing the seed file system: %w", err)
	}
	b, err := os.ReadFile(tmp.Name())
	if err != nil {
		return nil, fmt.Errorf("reading the seed image back: %w", err)
	}
	return b, nil
}
