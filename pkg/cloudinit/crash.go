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

// StatusMarker starts the console line in which the Stargate guest image prints the status text
// of cloud-init's single process when it fails (the exception that made a stage fail).
const StatusMarker = "STARGATE-CLOUD-INIT-STATUS: "

// cloudInitStages is how many stages cloud-init runs in a boot: init --local, init, modules config,
// modules final. Debian 12's cloud-init (22.4) runs each in a process of its own; 24.3 and later
// (Debian 13's, which the Stargate guest image carries) run all four in one process
// (cloud-init-main.service) that each stage's unit only signals.
const cloudInitStages = 4

var (
	// A line cloud-init's process PID wrote, as journald forwards it to the console.
	cloudInitLine = regexp.MustCompile(`cloud-init\[(\d+)\]: `)
	// A top-level crash: the traceback header, then the entry point's frame on the next line.
	tracebackHeader = []byte("Traceback (most recent call last):")
	entryFrame      = []byte(`File "/usr/bin/cloud-init"`)
	exceptionLine   = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.]*(?:Error|Exception)\b.*)`)

	// One process: a stage's unit prints this fixed line when the stage raised (cloud-init's
	// socket protocol), and the exception goes to the process's status text only, which the
	// guest image prints on the console when the process fails.
	stageFatal   = []byte(`fatal error, run "systemctl status cloud-init-main.service"`)
	statusFailed = regexp.MustCompile(regexp.QuoteMeta(StatusMarker) + `Completed with failure, first exception received: ` +
		`([^\r\n]*?)(?: in <frame at [^>]*>)?\.?(?: Run 'cloud-init status --long' for more details\.)?\r?$`)
)

// Crashed reports whether every stage of cloud-init's boot died on an exception, and returns the
// exception: then the final stage, the one that reports, died too, and the guest will never
// report. A root file system gone read-only does this. Both ways cloud-init runs are read:
//   - one process per stage (22.4): each process's traceback out of its entry point
//     (/usr/bin/cloud-init), the last one's exception returned;
//   - one process for all stages (24.3+): each stage unit's fatal-error line, and the process's
//     status text on its exit (printed by the Stargate guest image), the first exception returned.
//
// A guest image of another kind that prints neither is left to the timeout.
func Crashed(console []byte) (string, bool) {
	if exception, ok := crashedSingleProcess(console); ok {
		return exception, true
	}
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

// crashedSingleProcess is Crashed for cloud-init 24.3 and later: every stage's unit reported a
// fatal error, and the process ended with its first exception (the status line comes last, when
// the process exits, so a console that has it has all the stages' lines it will ever have).
func crashedSingleProcess(console []byte) (string, bool) {
	if bytes.Count(console, stageFatal) < cloudInitStages {
		return "", false
	}
	var exception string
	for _, line := range bytes.Split(console, []byte("\n")) {
		if m := statusFailed.FindSubmatch(line); m != nil {
			exception = string(m[1])
		}
	}
	return exception, exception != ""
}
