package sushytest

import (
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Disk makes an empty sparse raw disk of size bytes in the pool, owned by BMCUID, and returns
// its path.
func (e *Emulator) Disk(t testing.TB, name string, size int64) string {
	t.Helper()
	disk := filepath.Join(e.Pool, name+".raw")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, size); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(disk, BMCUID, BMCUID); err != nil {
		t.Fatal(err)
	}
	return disk
}

// Console is the file a domain's serial console may write to (a <serial type='file'>): in the
// logs directory, so that a failed test shows its end.
func (e *Emulator) Console(name string) string { return filepath.Join(e.Logs, name+"-console.log") }

// Define defines a domain from its XML; it is destroyed and undefined when the test ends (before
// libvirtd stops: QEMU is not libvirtd's child).
func (e *Emulator) Define(t testing.TB, name, domainXML string) {
	t.Helper()
	path := filepath.Join(e.Dir, name+".xml")
	if err := os.WriteFile(path, []byte(domainXML), 0o644); err != nil {
		t.Fatal(err)
	}
	e.Virsh(t, "define", path)
	t.Cleanup(func() {
		_, _ = e.TryVirsh("destroy", name)
		_, _ = e.TryVirsh("undefine", name)
	})
}

// Domain is the part of a libvirt domain's XML tests read.
type Domain struct {
	OSBoot []struct {
		Dev string `xml:"dev,attr"`
	} `xml:"os>boot"`
	Disks []struct {
		Device string `xml:"device,attr"`
		Source struct {
			File string `xml:"file,attr"`
		} `xml:"source"`
		Boot struct {
			Order string `xml:"order,attr"`
		} `xml:"boot"`
	} `xml:"devices>disk"`
}

// Domain reads a domain's definition: the persistent one (what the next power-on uses) when
// inactive, else the running one.
func (e *Emulator) Domain(t testing.TB, name string, inactive bool) Domain {
	t.Helper()
	args := []string{"dumpxml", name}
	if inactive {
		args = []string{"dumpxml", "--inactive", name}
	}
	var d Domain
	if err := xml.Unmarshal([]byte(e.Virsh(t, args...)), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// CDROMSource is the file in the domain's CD drive ("" when none, or when it has no CD drive:
// sushy-emulator removes the drive on eject).
func (d Domain) CDROMSource() string {
	for _, disk := range d.Disks {
		if disk.Device == "cdrom" && disk.Source.File != "" {
			return disk.Source.File
		}
	}
	return ""
}

// BootsFromCD reports whether the domain boots from its CD drive first, by per-device boot order
// or by the <os> boot list.
func (d Domain) BootsFromCD() bool {
	for _, disk := range d.Disks {
		if disk.Boot.Order == "1" {
			return disk.Device == "cdrom"
		}
	}
	return len(d.OSBoot) > 0 && d.OSBoot[0].Dev == "cdrom"
}

// daemon is a process startDaemon started.
type daemon struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when it has exited
}

// startDaemon starts argv in workDir ("" for the test's) as BMCUID, its output in
// logs/name.log; it is stopped (SIGTERM, then SIGKILL) with its process group when the test ends.
func startDaemon(t *testing.T, logs, name, workDir string, env []string, argv ...string) *daemon {
	t.Helper()
	log, err := os.Create(filepath.Join(logs, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = workDir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: BMCUID, Gid: BMCUID},
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	d := &daemon{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = log.Close()
		close(d.exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-d.exited
		}
	})
	return d
}
