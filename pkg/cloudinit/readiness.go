package cloudinit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// How the host learns that cloud-init finished, without logging into the guest: Stargate adds
// NoCloud vendor-data, a small script that cloud-init runs in its final stage. The script starts a
// transient systemd unit (so it outlives cloud-final) that waits for /run/cloud-init/result.json —
// written when cloud-init is done — and prints one line to the serial console:
//
//	STARGATE-READY {"instance_id":"...","errors":[...]}
//
// The instance-id changes on every install and the console log is new on every boot, so a line
// carrying the expected instance-id is proof that cloud-init finished in this boot of this install.

// readyMarker starts the line the guest prints when cloud-init is done.
const readyMarker = "STARGATE-READY "

// reporterProgram runs in the guest; %s is the instance-id as a Python string literal.
const reporterProgram = `import json, os, time
instance_id = %s
path = "/run/cloud-init/result.json"
while not os.path.exists(path):
    time.sleep(1)
time.sleep(0.5)  # result.json is written in one go, but be kind to slow disks
try:
    with open(path) as f:
        errors = json.load(f).get("v1", {}).get("errors", [])
except Exception as e:
    errors = ["stargate: cannot read %%s: %%s" %% (path, e)]
line = "\n%s" + json.dumps({"instance_id": instance_id, "errors": [str(e) for e in errors]}) + "\n"
for dev in ("/dev/ttyS0", "/dev/console"):
    try:
        with open(dev, "w") as f:
            f.write(line)
        break
    except OSError:
        pass
`

// ReadinessVendorData returns NoCloud vendor-data that reports cloud-init's result for instanceID
// on the serial console.
func ReadinessVendorData(instanceID string) []byte {
	id, _ := json.Marshal(instanceID) // a JSON string is a valid Python string literal
	program := fmt.Sprintf(reporterProgram, id, readyMarker)
	var b bytes.Buffer
	b.WriteString("#!/bin/sh\n")
	b.WriteString("# Stargate: report on the serial console when cloud-init has finished (see pkg/cloudinit/readiness.go).\n")
	b.WriteString("cat > /run/stargate-report.py <<'STARGATE_EOF'\n")
	b.WriteString(program)
	b.WriteString("STARGATE_EOF\n")
	b.WriteString("if command -v systemd-run >/dev/null 2>&1; then\n")
	b.WriteString("  exec systemd-run --no-block --collect --unit=stargate-report python3 /run/stargate-report.py\n")
	b.WriteString("fi\n")
	b.WriteString("nohup python3 /run/stargate-report.py >/dev/null 2>&1 &\n")
	return b.Bytes()
}

// GuestResult is what the guest reported about cloud-init in this boot.
type GuestResult struct {
	// Done is true when the guest reported that cloud-init finished for the expected instance-id.
	Done bool
	// Errors lists what cloud-init reported as failed (empty on success).
	Errors []string
}

var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?]*[a-zA-Z]`)

var readyLine = regexp.MustCompile(regexp.QuoteMeta(readyMarker) + `(\{.*\})`)

// ParseGuestResult scans a serial console log for the readiness line of instanceID. Lines of other
// instance-ids (a previous install) are ignored.
func ParseGuestResult(console []byte, instanceID string) GuestResult {
	for _, m := range readyLine.FindAllSubmatch(console, -1) {
		var r struct {
			InstanceID string   `json:"instance_id"`
			Errors     []string `json:"errors"`
		}
		if err := json.Unmarshal(m[1], &r); err != nil || r.InstanceID != instanceID {
			continue
		}
		return GuestResult{Done: true, Errors: r.Errors}
	}
	return GuestResult{}
}

// ConsoleTail returns the last maxLines lines of a console log, at most maxBytes, with terminal
// control characters removed, for status messages.
func ConsoleTail(console []byte, maxLines, maxBytes int) string {
	if len(console) > maxBytes*4 {
		console = console[len(console)-maxBytes*4:]
	}
	clean := strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || (r >= 0x20 && r != 0x7f) {
			return r
		}
		return -1
	}, ansiEscape.ReplaceAllString(string(console), ""))
	lines := strings.Split(strings.TrimRight(clean, "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	out := strings.Join(lines, "\n")
	if len(out) > maxBytes {
		out = out[len(out)-maxBytes:]
	}
	return out
}
