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

// cloudInitStages is how many processes cloud-init runs in during a boot: Debian's cloud-init
// (22.4) has one systemd unit per stage (init --local, init, modules config, modules final).
const cloudInitStages = 4

var (
	// A line cloud-init's process PID wrote, as journald forwards it to the console.
	cloudInitLine = regexp.MustCompile(`cloud-init\[(\d+)\]: `)
	// A top-level crash: the traceback header, then the entry point's frame on the next line.
	tracebackHeader = []byte("Traceback (most recent call last):")
	entryFrame      = []byte(`File "/usr/bin/cloud-init"`)
	exceptionLine   = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.]*(?:Error|Exception)\b.*)`)
)

// Crashed reports whether every cloud-init process of the boot died on an exception out
// of its entry point (/usr/bin/cloud-init), as their tracebacks on the console show, and returns
// the last one's exception. Then its final stage, the one that reports, died too, and the guest
// will never report: a root file system gone read-only does this. A cloud-init that runs its
// stages in fewer processes never counts as crashed here (its guest is left to the timeout).
func Crashed(console []byte) (string, bool) {
	if !bytes.Contains(console, tracebackHeader) {
		return "", false
	}
	headerSeen := map[string]bool{} // the process's previous line was a traceback header
	crashed := map[string]bool{}
	last := ""
	for _, line := range bytes.Split(console, []byte("\n")) {
		loc := cloudInitLine.FindSubmatchIndex(line)
		if loc == nil {
			continue
		}
		pid, text := string(line[loc[2]:loc[3]]), bytes.TrimSpace(line[loc[1]:])
		switch {
		case bytes.Equal(text, tracebackHeader):
			headerSeen[pid] = true
			continue
		case headerSeen[pid] && bytes.HasPrefix(text, entryFrame):
			crashed[pid] = true
		case crashed[pid]:
			if m := exceptionLine.FindSubmatch(text); m != nil {
				last = string(bytes.TrimRight(m[1], "\r"))
			}
		}
		delete(headerSeen, pid)
	}
	return last, len(crashed) >= cloudInitStages
}
