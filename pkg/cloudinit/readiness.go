package cloudinit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
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

// reporterProgram runs in the guest; %s is the instance-id as a Python string literal. Besides the
// result it reports the guest's own boot timeline: when the kernel started (btime, wall clock), how
// long the kernel ran before init, and each cloud-init stage's start and end from cloud-init's
// status.json (wall clock), plus the user-data's own commands (cloud-init's scripts-user module)
// when "cloud-init analyze dump" knows them. Anything it cannot read is left out, never guessed.
const reporterProgram = `import json, os, subprocess, time
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
timeline = {}
try:
    with open("/proc/stat") as f:
        timeline["btime"] = float([l.split()[1] for l in f if l.startswith("btime ")][0])
    with open("/proc/1/stat") as f:
        timeline["init_start"] = float(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
except Exception:
    pass
try:
    with open("/run/cloud-init/status.json") as f:
        v1 = json.load(f).get("v1", {})
    timeline["stages"] = [[name, v1[name]["start"], v1[name]["finished"]]
                          for name in ("init-local", "init", "modules-config", "modules-final")
                          if isinstance(v1.get(name), dict) and v1[name].get("start") and v1[name].get("finished")]
except Exception:
    pass
try:
    events = json.loads(subprocess.run(["cloud-init", "analyze", "dump"], capture_output=True, timeout=60).stdout)
    marks = {}
    for ev in events:
        if ev.get("name") == "modules-final/config-scripts-user":
            marks[ev.get("event_type")] = ev.get("timestamp")
    if "start" in marks and "finish" in marks:
        timeline["user_commands"] = [marks["start"], marks["finish"]]
except Exception:
    pass
line = "\n%s" + json.dumps({"instance_id": instance_id, "errors": [str(e) for e in errors], "timeline": timeline}) + "\n"
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
	return reporterVendorData(instanceID, "")
}

// callbackProgram follows reporterProgram in a guest the host cannot read the console of (a real
// server): it POSTs the same line to a URL with a bearer token. %s are the URL and the token as
// Python string literals. A 4xx answer other than 429 is final (wrong token, Operation over).
const callbackProgram = `
import urllib.error, urllib.request
request = urllib.request.Request(%s, data=line.encode(), method="POST",
                                 headers={"Authorization": "Bearer " + %s, "Content-Type": "text/plain"})
for attempt in range(120):
    try:
        urllib.request.urlopen(request, timeout=20).read()
        break
    except urllib.error.HTTPError as e:
        if 400 <= e.code < 500 and e.code != 429:
            break
    except Exception:
        pass
    time.sleep(5)
`

// CallbackVendorData returns NoCloud vendor-data that reports cloud-init's result for instanceID
// as ReadinessVendorData does, and POSTs the same line to url with "Authorization: Bearer token":
// the only way a real server can tell its controller it is up. The token is written to files
// only root can read. ParseGuestResult reads the body the controller receives.
func CallbackVendorData(instanceID, url, token string) []byte {
	id, _ := json.Marshal(instanceID) // a JSON string is a valid Python string literal
	u, _ := json.Marshal(url)
	tok, _ := json.Marshal(token)
	program := fmt.Sprintf(reporterProgram, id, readyMarker) + fmt.Sprintf(callbackProgram, u, tok)
	return reporterScript(program, "")
}

// bakeFinish runs in a bake VM after the report: it leaves the disk as a fresh image — cloud-init
// runs again on the next boot (new instance), the machine-id and random seed are made anew — and
// powers off, which tells the host the disk is ready to keep. Host keys need no removal:
// cloud-init replaces them for every new instance.
// After the clean it prints BakedMarker's line: a bake VM that powers off without it was not
// cleaned (its installation powered it off, say), and its disk must not be kept.
const bakeFinish = `#!/bin/sh
# Stargate: this VM baked a golden image (see pkg/cloudinit/readiness.go).
set -e
cloud-init clean --logs
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed
: > /etc/machine-id
sync
echo "%s" > /dev/ttyS0
systemctl poweroff
`

// bakedPrefix starts BakedMarker's line.
const bakedPrefix = "STARGATE-BAKED "

// BakedMarker is the line a bake VM prints on its serial console once its instance state is
// cleaned and on disk, just before it powers off.
func BakedMarker(instanceID string) string { return bakedPrefix + instanceID }

// IsMarkerLine reports whether a console line is one the host waits for (a readiness line or a
// bake's BakedMarker), so that it is kept when a console outgrows its size (pkg/consolelog).
func IsMarkerLine(line []byte) bool {
	return readyLine.Match(line) || bytes.Contains(line, []byte(bakedPrefix))
}

// BakeVendorData returns NoCloud vendor-data for a golden image bake: it reports cloud-init's
// result for instanceID as ReadinessVendorData does, then cleans the instance state and powers
// the machine off.
func BakeVendorData(instanceID string) []byte {
	return reporterVendorData(instanceID, fmt.Sprintf(bakeFinish, BakedMarker(instanceID)))
}

// reporterVendorData is the vendor-data script: the reporter, then finish (a shell script) if set.
func reporterVendorData(instanceID, finish string) []byte {
	id, _ := json.Marshal(instanceID) // a JSON string is a valid Python string literal
	return reporterScript(fmt.Sprintf(reporterProgram, id, readyMarker), finish)
}

// reporterScript is the vendor-data script that runs program in the background once, then finish
// (a shell script) if set.
func reporterScript(program, finish string) []byte {
	command := "python3 /run/stargate-report.py"
	var b bytes.Buffer
	b.WriteString("#!/bin/sh\n")
	b.WriteString("# Stargate: report when cloud-init has finished (see pkg/cloudinit/readiness.go).\n")
	b.WriteString("umask 077\n")
	b.WriteString("cat > /run/stargate-report.py <<'STARGATE_EOF'\n")
	b.WriteString(program)
	b.WriteString("STARGATE_EOF\n")
	if finish != "" {
		b.WriteString("cat > /run/stargate-finish.sh <<'STARGATE_EOF'\n")
		b.WriteString(finish)
		b.WriteString("STARGATE_EOF\n")
		command = "sh -c 'python3 /run/stargate-report.py; exec sh /run/stargate-finish.sh'"
	}
	b.WriteString("if command -v systemd-run >/dev/null 2>&1; then\n")
	b.WriteString("  exec systemd-run --no-block --collect --unit=stargate-report " + command + "\n")
	b.WriteString("fi\n")
	b.WriteString("nohup " + command + " >/dev/null 2>&1 &\n")
	return b.Bytes()
}

// GuestResult is what the guest reported about cloud-init in this boot.
type GuestResult struct {
	// Done is true when the guest reported that cloud-init finished for the expected instance-id.
	Done bool
	// Errors lists what cloud-init reported as failed (empty on success).
	Errors []string
	// Timeline is the guest's boot as it reported it, in order; steps it did not report are absent.
	Timeline []TimelineStep
	// KernelStart is when the guest's kernel started, by its own clock (zero if not reported).
	KernelStart time.Time
}

// TimelineStep is one step of a guest's boot.
type TimelineStep struct {
	// Name is kernel, cloud-init-local, cloud-init-network, cloud-init-config, cloud-init-final or
	// user-commands.
	Name     string
	Duration time.Duration
}

// guestTimeline is the timeline the reporter prints (times in seconds).
type guestTimeline struct {
	BTime        float64   `json:"btime"`
	InitStart    float64   `json:"init_start"`
	Stages       [][3]any  `json:"stages"`
	UserCommands []float64 `json:"user_commands"`
}

// stageNames are cloud-init's stages as the timeline names them (after their systemd units).
var stageNames = map[string]string{
	"init-local": "cloud-init-local", "init": "cloud-init-network", "modules-config": "cloud-init-config", "modules-final": "cloud-init-final",
}

func (g guestTimeline) steps() ([]TimelineStep, time.Time) {
	var out []TimelineStep
	var kernelStart time.Time
	if g.BTime > 0 {
		kernelStart = time.Unix(0, int64(g.BTime*1e9))
	}
	if g.InitStart > 0 {
		out = append(out, TimelineStep{Name: "kernel", Duration: seconds(g.InitStart)})
	}
	for _, st := range g.Stages {
		name, _ := st[0].(string)
		start, ok1 := st[1].(float64)
		end, ok2 := st[2].(float64)
		if stageNames[name] == "" || !ok1 || !ok2 || end < start {
			continue
		}
		out = append(out, TimelineStep{Name: stageNames[name], Duration: seconds(end - start)})
	}
	if len(g.UserCommands) == 2 && g.UserCommands[1] >= g.UserCommands[0] {
		out = append(out, TimelineStep{Name: "user-commands", Duration: seconds(g.UserCommands[1] - g.UserCommands[0])})
	}
	return out, kernelStart
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(10 * time.Millisecond)
}

var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?]*[a-zA-Z]`)

var readyLine = regexp.MustCompile(regexp.QuoteMeta(readyMarker) + `(\{.*\})`)

// ParseGuestResult scans a serial console log for the readiness line of instanceID. Lines of other
// instance-ids (a previous install) are ignored.
func ParseGuestResult(console []byte, instanceID string) GuestResult {
	for _, m := range readyLine.FindAllSubmatch(console, -1) {
		var r struct {
			InstanceID string        `json:"instance_id"`
			Errors     []string      `json:"errors"`
			Timeline   guestTimeline `json:"timeline"`
		}
		if err := json.Unmarshal(m[1], &r); err != nil || r.InstanceID != instanceID {
			continue
		}
		steps, kernelStart := r.Timeline.steps()
		return GuestResult{Done: true, Errors: r.Errors, Timeline: steps, KernelStart: kernelStart}
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

// guestErrorLine matches the console lines in which a guest says something broke underneath it:
// its disk (I/O errors, a file system gone read-only), its kernel, its memory, or cloud-init
// itself crashing. A guest that hangs on one of these never reports; the line says why.
var guestErrorLine = regexp.MustCompile(`I/O error|EXT4-fs error|Read-only file system|Kernel panic|Out of memory|` +
	`blk_update_request|Buffer I/O error|Traceback \(most recent call last\)|segfault at`)

// GuestErrors returns the last maxLines console lines of console that report a failure beneath
// the guest's software (guestErrorLine), cleaned as ConsoleTail cleans them, newest last.
func GuestErrors(console []byte, maxLines int) []string {
	var out []string
	for _, l := range strings.Split(ConsoleTail(console, 1<<20, len(console)+1), "\n") {
		if l = strings.TrimSpace(l); guestErrorLine.MatchString(l) {
			out = append(out, l)
		}
	}
	return out[max(0, len(out)-maxLines):]
}
