package qemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"stargate.io/stargate/internal/testreq"
)

func TestBlkdebugConfigBounds(t *testing.T) {
	if _, err := BlkdebugConfig(DiskErrors{ReadAfter: -1, WriteAfter: -1}); err == nil {
		t.Error("no errors to inject: want an error")
	}
	if _, err := BlkdebugConfig(DiskErrors{ReadAfter: -1, WriteAfter: MaxCountedOperations + 1}); err == nil {
		t.Error("more operations than counted: want an error")
	}
	b, err := BlkdebugConfig(DiskErrors{ReadAfter: -1, WriteAfter: 0})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(b), "["); got != 1 || !strings.Contains(string(b), `iotype = "write"`) {
		t.Errorf("errors from the first write on: want one write rule, got\n%s", b)
	}
}

// The rules really make QEMU's block layer fail as they say: qemu-io drives the same node chain
// the VM's -drive builds (raw over blkdebug over the qcow2 overlay).
func TestBlkdebugConfigWithQEMU(t *testing.T) {
	testreq.Command(t, "qemu-io", "sudo apt-get install -y qemu-utils")
	testreq.Command(t, "qemu-img", "sudo apt-get install -y qemu-utils")
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, tc := range []struct {
		name string
		e    DiskErrors
		ops  []string // qemu-io commands
		fail []bool   // whether each fails
	}{
		{"writes fail after 3 operations", DiskErrors{ReadAfter: -1, WriteAfter: 3},
			[]string{"write 0 4k", "read 0 4k", "write 4k 4k", "write 8k 4k", "read 0 4k", "write 0 4k"},
			[]bool{false, false, false, true, false, true}},
		{"reads fail after 2 operations", DiskErrors{ReadAfter: 2, WriteAfter: -1},
			[]string{"read 0 4k", "write 0 4k", "read 0 4k", "write 4k 4k"},
			[]bool{false, false, true, false}},
		{"both", DiskErrors{ReadAfter: 1, WriteAfter: 2},
			[]string{"read 0 4k", "write 0 4k", "read 0 4k", "write 0 4k"},
			[]bool{false, false, true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := BlkdebugConfig(tc.e)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "blkdebug.conf"), conf, 0o600); err != nil {
				t.Fatal(err)
			}
			drive := "driver=raw,file.driver=blkdebug,file.config=" + filepath.Join(dir, "blkdebug.conf") +
				",file.image.driver=qcow2,file.image.file.driver=file,file.image.file.filename=" + disk
			args := []string{"--image-opts", drive}
			for _, op := range tc.ops {
				args = append(args, "-c", op)
			}
			out, _ := exec.Command("qemu-io", args...).CombinedOutput()
			var got []bool
			for _, l := range strings.Split(string(out), "\n") {
				switch {
				case strings.Contains(l, "failed: Input/output error"):
					got = append(got, true)
				case strings.HasPrefix(l, "wrote ") || strings.HasPrefix(l, "read "):
					got = append(got, false)
				}
			}
			if len(got) != len(tc.fail) {
				t.Fatalf("qemu-io said:\n%s", out)
			}
			for i := range got {
				if got[i] != tc.fail[i] {
					t.Errorf("%s (#%d): failed=%v, want %v\n%s", tc.ops[i], i, got[i], tc.fail[i], out)
				}
			}
		})
	}
}

// The VM's disk is found as its VM's in either form of -drive (pidfile reuse check).
func TestUsesDisk(t *testing.T) {
	for _, blk := range []bool{false, true} {
		spec := VMSpec{Dir: "/vms/ns/a", Accel: AccelTCG, Blkdebug: blk, DiskBytesPerSecond: 4096}
		cmdline := []byte(strings.Join(Cmdline(spec), "\x00"))
		if !usesDisk(cmdline, "/vms/ns/a") || usesDisk(cmdline, "/vms/ns/b") || usesDisk(cmdline, "/vms/ns") {
			t.Errorf("blkdebug=%v: usesDisk wrong for %q", blk, cmdline)
		}
	}
}
