package installer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// SetUpInit prepares what a kernel hands /init: nothing but the unpacked initramfs. It mounts
// /proc, /sys and /dev (devtmpfs, so device nodes appear as drivers create them), a /tmp, and
// points standard input and output at /dev/console (the initramfs has no device nodes of its own,
// so the kernel may have started /init without a console).
func SetUpInit() error {
	mounts := []struct{ source, target, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", m.target, err)
		}
		if err := unix.Mount(m.source, m.target, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	if err := os.MkdirAll("/etc", 0o755); err != nil {
		return fmt.Errorf("creating /etc: %w", err)
	}
	console, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/console: %w", err)
	}
	for fd := range 3 {
		if err := unix.Dup3(int(console.Fd()), fd, 0); err != nil {
			return fmt.Errorf("attaching fd %d to the console: %w", fd, err)
		}
	}
	return console.Close()
}

// OpenConsoles returns a writer to every console the kernel writes to (/sys/class/tty/console/active,
// e.g. "tty0 ttyS0"): /dev/console is only the last of them, and an operator may be watching the
// screen through the BMC's remote console or the serial port through serial-over-LAN. Without any,
// it returns fallback.
func OpenConsoles(fallback io.Writer) io.Writer {
	active, err := os.ReadFile("/sys/class/tty/console/active")
	if err != nil {
		return fallback
	}
	var writers []io.Writer
	for _, name := range strings.Fields(string(active)) {
		if strings.ContainsAny(name, "/.") {
			continue
		}
		f, err := os.OpenFile("/dev/"+name, os.O_WRONLY|unix.O_NOCTTY, 0)
		if err != nil {
			continue
		}
		writers = append(writers, f)
	}
	if len(writers) == 0 {
		return fallback
	}
	return io.MultiWriter(writers...)
}

// KernelRelease is uname -r: the directory of the running kernel's modules under /lib/modules.
func KernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return strings.TrimRight(string(u.Release[:]), "\x00"), nil
}

// PowerOff syncs the disks and powers the machine off. As PID 1 it must never return (the kernel
// panics when init exits): if the power-off call fails, it says so and waits for a human.
func PowerOff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	fmt.Fprintf(os.Stderr, "stargate-installer: powering off failed (%v): switch the machine off by hand\n", err)
	for {
		time.Sleep(time.Hour)
	}
}
