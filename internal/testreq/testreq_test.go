package testreq_test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"stargate.io/stargate/internal/testreq"
)

// envChild makes TestChild do its work: it runs only as a subprocess of the tests below.
const envChild = "TESTREQ_CHILD"

// TestChild is the tiny test the subprocesses run: it needs something that is never there.
func TestChild(t *testing.T) {
	switch os.Getenv(envChild) {
	case "need":
		testreq.Need(t, "the flux capacitor", "sudo apt-get install -y flux-capacitor")
	case "command":
		testreq.Command(t, "stargate-no-such-command", "sudo apt-get install -y no-such-package")
	default:
		return
	}
	t.Log("not stopped")
}

// runChild runs TestChild in a subprocess with exactly the given CI-related variables.
func runChild(t *testing.T, mode string, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChild$", "-test.v", "-test.count=1")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CI=") && !strings.HasPrefix(kv, testreq.EnvRequire+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, append(env, envChild+"="+mode)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestNeedFailsWhereRequired(t *testing.T) {
	for _, tc := range []struct {
		mode string
		env  []string
		why  string
	}{
		{"need", []string{"CI=true"}, "CI=true"},
		{"need", []string{testreq.EnvRequire + "=1"}, testreq.EnvRequire + "=1"},
		{"command", []string{"CI=true"}, "CI=true"},
	} {
		out, err := runChild(t, tc.mode, tc.env...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("%s with %v: exit %v, want a test failure (exit 1); output:\n%s", tc.mode, tc.env, err, out)
		}
		for _, want := range []string{"--- FAIL: TestChild", "needs ", "to get it: sudo apt-get install -y ",
			"may not be skipped with " + tc.why} {
			if !strings.Contains(out, want) {
				t.Errorf("%s with %v: output lacks %q:\n%s", tc.mode, tc.env, want, out)
			}
		}
		if strings.Contains(out, "not stopped") {
			t.Errorf("%s with %v: the test went on after Need:\n%s", tc.mode, tc.env, out)
		}
	}
}

func TestNeedSkipsElsewhere(t *testing.T) {
	for _, env := range [][]string{nil, {"CI=false"}, {testreq.EnvRequire + "=0"}} {
		out, err := runChild(t, "need", env...)
		if err != nil {
			t.Errorf("with %v: %v, want a skip; output:\n%s", env, err, out)
		}
		for _, want := range []string{"--- SKIP: TestChild",
			"needs the flux capacitor; to get it: sudo apt-get install -y flux-capacitor"} {
			if !strings.Contains(out, want) {
				t.Errorf("with %v: output lacks %q:\n%s", env, want, out)
			}
		}
	}
}

func TestCommandFindsWhatIsThere(t *testing.T) {
	t.Setenv("CI", "true")
	if path := testreq.Command(t, "sh", "sudo apt-get install -y dash"); !strings.HasSuffix(path, "/sh") {
		t.Errorf("Command(sh) = %q", path)
	}
}
