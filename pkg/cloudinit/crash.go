package cloudinit

import (
	"bytes"
	"regexp"
)

// CrashKernel returns vendor-data (a shell script, as ReadinessVendorData's) that first makes the
// guest's kernel crash: a real panic (sysrq "c"), as cloud-init's final stage runs the vendor
// script. An injected KernelCrash: the host has no other way into a guest's kernel (an NMI only
// makes most kernels log it).
func CrashKernel(vendorData []byte) []byte {
	shebang := []byte("#!/bin/sh\n")
	rest, ok := bytes.CutPrefix(vendorData, shebang)
	if !ok {
		return vendorData
	}
	var b bytes.Buffer
	b.Write(shebang)
	b.WriteString("# Stargate: an injected KernelCrash (a FaultInjection): the kernel panics here.\n")
	b.WriteString("echo c > /proc/sysrq-trigger\n")
	b.Write(rest)
	return b.Bytes()
}

var kernelPanic = regexp.MustCompile(`Kernel panic - not syncing:[^\r\n]*`)

// KernelPanic returns the console's kernel panic line, if the guest's kernel panicked.
func KernelPanic(console []byte) (string, bool) {
	m := kernelPanic.Find(console)
	return string(m), m != nil
}
