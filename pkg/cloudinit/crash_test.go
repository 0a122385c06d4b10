package cloudinit

import (
	"bytes"
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
