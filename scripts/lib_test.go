package scripts_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"stargate.io/stargate/internal/testenv"
)

// fakeSimulator answers `paths` as bin/simulator does (key=value lines), with the arguments it got
// in the values so that the test sees they were passed on.
const fakeSimulator = `#!/usr/bin/env bash
[[ "$1" == paths ]] || exit 2
shift
wd=/var/lib/stargate ns="" srv=""
while (($#)); do
	case "$1" in
	--work-dir) wd="$2"; shift 2 ;;
	--namespace) ns="$2"; shift 2 ;;
	--server) srv="$2"; shift 2 ;;
	*) exit 2 ;;
	esac
done
printf 'work_dir=%s\nimages_dir=%s/images\nvms_dir=%s/vms\nrun_dir=%s/run\nipam_dir=%s/ipam\n' "$wd" "$wd" "$wd" "$wd" "$wd"
if [[ -n "$ns" ]]; then
	printf 'vm_dir=%s/vms/%s/%s\nconsole=%s/vms/%s/%s/console.log\ntap=sg-0123456789\n' "$wd" "$ns" "$srv" "$wd" "$ns" "$srv"
fi
`

// fakeKubectl is the function k that lib.sh's Operation helpers call: Operation op-ok succeeded,
// op-bad failed.
const fakeKubectl = `
k() {
	case "$*" in
	*op-ok*jsonpath*phase*) printf 'Succeeded\nthe repave succeeded after 12 s\n' ;;
	*op-bad*jsonpath*phase*) printf 'Failed\ncloud-init failed\n' ;;
	*op-bad*jsonpath*message*) printf 'cloud-init failed: runcmd exited 1' ;;
	*go-template*)
		printf '2026-11-25T10:00:00Z 2026-11-25T10:00:05Z\n'
		printf 'Scheduled True 2026-11-25T10:00:05Z\nImageReady True 2026-11-25T10:00:09Z\nGuestReady False 2026-11-25T10:01:00Z\n' ;;
	*wait*) return 0 ;;
	*) echo "k: unexpected $*" >&2; return 1 ;;
	esac
}
`

func runLib(t *testing.T, script string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	sim := filepath.Join(dir, "simulator")
	if err := os.WriteFile(sim, []byte(fakeSimulator), 0o755); err != nil {
		t.Fatal(err)
	}
	prelude := "set -euo pipefail\nLOG_TAG=test\nsource " + filepath.Join(testenv.RepoRoot(), "scripts", "lib.sh") +
		"\nSIMULATOR=" + sim + "\n" + fakeKubectl
	out, err := exec.Command("bash", "-c", prelude+script).CombinedOutput()
	return string(out), err
}

func TestLibLayoutComesFromTheSimulator(t *testing.T) {
	out, err := runLib(t, `
vm_path console dc-simulator worker-1
WORK_DIR=/srv/sg vm_path tap dc-simulator worker-1
WORK_DIR=/srv/sg sim_path ipam_dir
`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := "/var/lib/stargate/vms/dc-simulator/worker-1/console.log\nsg-0123456789\n/srv/sg/ipam\n"
	if out != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}

	out, err = runLib(t, `vm_path no_such_key dc-simulator worker-1; echo "not reached"`)
	if err == nil || !strings.Contains(out, "[test] ERROR: ") || !strings.Contains(out, "printed no no_such_key") ||
		strings.Contains(out, "not reached") {
		t.Errorf("an unknown key: %v\n%s", err, out)
	}
	out, err = runLib(t, `SIMULATOR=/nonexistent; sim_path vms_dir`)
	if err == nil || !strings.Contains(out, "/nonexistent is missing: run `make build`") {
		t.Errorf("no simulator: %v\n%s", err, out)
	}
}

func TestLibWaitOperationAndTable(t *testing.T) {
	out, err := runLib(t, `wait_operation dc op-ok 60; operation_table dc op-ok`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// The seconds in brackets are the wall time wait_operation took: 0 or more on a loaded machine.
	if !regexp.MustCompile(`\[test\]\s+op-ok \[\d+s\]: Succeeded: the repave succeeded after 12 s\n`).MatchString(out) {
		t.Errorf("output lacks the Operation's outcome line:\n%s", out)
	}
	for _, want := range []string{
		"STEP op-ok\n",
		"Scheduled 0\n",
		"ImageReady 4\n",
		"GuestReady False\n",
	} {
		if !strings.Contains(squeeze(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	out, err = runLib(t, `wait_operation dc op-bad 60; echo "not reached"`)
	if err == nil || strings.Contains(out, "not reached") ||
		!strings.Contains(out, "[test] ERROR: Operation op-bad failed: cloud-init failed: runcmd exited 1") ||
		!strings.Contains(squeeze(out), "ImageReady 4\n") {
		t.Errorf("a failed Operation: %v\n%s", err, out)
	}
}

// squeeze collapses the spaces in each line of s, so that table cells compare without their padding.
func squeeze(s string) string {
	ls := strings.Split(s, "\n")
	for i, l := range ls {
		ls[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(ls, "\n")
}
