// Package testreq decides what a test does when something it needs is missing (root, a guest
// image, envtest binaries, a tool): on a developer's machine it skips, saying what is missing and
// how to install it; where tests must not pass by skipping — CI (CI=true) or with
// STARGATE_REQUIRE_VM_TESTS=1 — it fails with the same message, so a CI machine that lacks
// something cannot go green having booted nothing.
//
//	func TestBoot(t *testing.T) {
//		testreq.Command(t, "qemu-img", "sudo apt-get install -y qemu-utils")
//		if os.Getenv("STARGATE_GUEST_IMAGE") == "" {
//			testreq.Need(t, "STARGATE_GUEST_IMAGE (the offline guest image)", "run `sudo make test`, which builds it")
//		}
//		...
//
// `go test -short` is a deliberate choice to run only the fast tests; skipping for it is a plain
// t.Skip, not this package (CI never passes -short).
package testreq

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// EnvRequire names the variable that, set to 1 (or true), makes missing requirements fail tests
// outside CI too.
const EnvRequire = "STARGATE_REQUIRE_VM_TESTS"

// Required reports whether a missing requirement fails a test instead of skipping it, and why:
// CI=true, or STARGATE_REQUIRE_VM_TESTS=1.
func Required() (bool, string) {
	for _, name := range []string{"CI", EnvRequire} {
		if v, err := strconv.ParseBool(os.Getenv(name)); err == nil && v {
			return true, name + "=" + os.Getenv(name)
		}
	}
	return false, ""
}

// Need stops t because what is missing: it fails t when Required, and skips it otherwise. The
// message names what is missing and howToInstall it.
func Need(t testing.TB, what, howToInstall string) {
	t.Helper()
	msg := fmt.Sprintf("needs %s; to get it: %s", what, howToInstall)
	if required, why := Required(); required {
		t.Fatalf("%s (this test may not be skipped with %s)", msg, why)
	}
	t.Skip(msg)
}

// Command returns the path of the executable name on PATH; without it, it stops t as Need does.
func Command(t testing.TB, name, howToInstall string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Need(t, name+" on PATH", howToInstall)
	}
	return path
}
