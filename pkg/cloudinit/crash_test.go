package cloudinit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCrashKernel(t *testing.T) {
	vd := ReadinessVendorData("i-1")
	got := CrashKernel(vd)
	if !bytes.HasPrefix(got, []byte("#!/bin/sh\n# Stargate: an injected KernelCrash")) ||
		!bytes.Contains(got, []byte("\necho c > /proc/sysrq-trigger\n")) || !bytes.HasSuffix(got, vd[len("#!/bin/sh\n"):]) {
		t.Errorf("crashing vendor-data:\n%s", got)
	}
	if got := CrashKernel([]byte("#cloud-config\n")); string(got) != "#cloud-config\n" {
		t.Errorf("not a script: changed to %q", got)
	}
}

func TestKernelPanic(t *testing.T) {
	console := []byte("[   42.1] sysrq: Trigger a crash\r\n[   42.1] Kernel panic - not syncing: sysrq triggered crash\r\n[   42.2] CPU: 0 PID: 1\r\n")
	if line, ok := KernelPanic(console); !ok || line != "Kernel panic - not syncing: sysrq triggered crash" {
		t.Errorf("KernelPanic = %q %v", line, ok)
	}
	if _, ok := KernelPanic([]byte("[ 1.0] Booting\n")); ok {
		t.Error("a panic found in a clean boot")
	}
}

// A real console (Debian 12, cloud-init 22.4) of a guest whose disk fails every write from boot
// (QEMU blkdebug): the root file system stays read-only and each of cloud-init's four processes
// dies on it. Cut to the tracebacks and the lines around them.
func TestCrashed(t *testing.T) {
	console, err := os.ReadFile(filepath.Join("testdata", "console-readonly-root.log"))
	if err != nil {
		t.Fatal(err)
	}
	exception, ok := Crashed(console)
	if !ok || exception != "OSError: [Errno 30] Read-only file system: '/var/lib/cloud'" {
		t.Errorf("Crashed = %q %v, want the read-only file system, every stage crashed", exception, ok)
	}
	// Three stages crashed, the last still running (its traceback not there yet): not yet.
	last := bytes.LastIndex(console, []byte("Traceback (most recent call last):"))
	if _, ok := Crashed(console[:last]); ok {
		t.Error("crashed with three of the four stages' tracebacks")
	}
}

// A real console (Debian 12 with Debian 13's cloud-init 25.1, the Stargate guest image) of the
// same guest: one cloud-init process runs every stage, each stage's unit prints a fatal error and
// the image prints the process's status text when it exits. Cut to the lines around them.
func TestCrashedSingleProcess(t *testing.T) {
	console, err := os.ReadFile(filepath.Join("testdata", "console-readonly-root-single-process.log"))
	if err != nil {
		t.Fatal(err)
	}
	exception, ok := Crashed(console)
	if !ok || exception != "OSError(30, 'Read-only file system')" {
		t.Errorf("Crashed = %q %v, want the read-only file system, every stage crashed", exception, ok)
	}
	// Every stage reported its fatal error, but the process has not exited yet: its status line
	// (the exception) is missing, and so is the verdict.
	status := bytes.Index(console, []byte("STARGATE-CLOUD-INIT-STATUS"))
	if _, ok := Crashed(console[:status]); ok {
		t.Error("crashed before the process's status line")
	}
	// Three stages crashed and the process failed: the final stage did not crash, it may report.
	first := bytes.Index(console, stageFatal)
	if _, ok := Crashed(append(bytes.Clone(console[:first]), console[first+len(stageFatal):]...)); ok {
		t.Error("crashed with three of the four stages' fatal errors")
	}
}

// A traceback that does not start at cloud-init's entry point (an exception it logged and
// handled, a script's own) is no crash of a stage.
func TestCrashedIgnoresOtherTracebacks(t *testing.T) {
	var b strings.Builder
	for pid := 300; pid < 304; pid++ {
		fmt.Fprintf(&b, "[ 40.0] cloud-init[%d]: Traceback (most recent call last):\n", pid)
		fmt.Fprintf(&b, "[ 40.1] cloud-init[%d]:   File \"/usr/lib/python3/dist-packages/cloudinit/util.py\", line 1, in subp\n", pid)
		fmt.Fprintf(&b, "[ 40.2] cloud-init[%d]: OSError: [Errno 2] No such file or directory\n", pid)
	}
	b.WriteString("[ 41.0] cloud-init[310]: Traceback (most recent call last):\n[ 41.1] cloud-init[311]:   File \"/usr/bin/cloud-init\", line 33, in <module>\n")
	if exception, ok := Crashed([]byte(b.String())); ok {
		t.Errorf("handled tracebacks counted as crashes: %q", exception)
	}
	if _, ok := Crashed([]byte("[ 1.0] Booting\n")); ok {
		t.Error("a crash found in a clean boot")
	}
}
