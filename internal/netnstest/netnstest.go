// Package netnstest runs a test binary inside a network namespace it creates, so that tests that
// change networking (bridges, taps, iptables, QEMU VMs) never touch the host's own namespace.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(netnstest.Main(m)) }
//
// As root, Main creates a fresh namespace, re-executes the test binary inside it with
// `ip netns exec` (so every thread and child process is in it, avoiding Go's thread/namespace
// traps), and deletes the namespace afterwards. Tests then call Require to run only there, or
// RanIsolated to run in a namespace of their own, side by side with other isolated tests (VM tests).
// Without root, tests run in place and Require skips with the reason — or fails, in CI (see
// package testreq).
package netnstest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"stargate.io/stargate/internal/testreq"
)

// prefix names the namespaces this package creates; the suffix is the creating process's PID.
const prefix = "stargate-test-"

// envNetns is set in the re-executed test binary to the namespace it runs in.
const envNetns = "STARGATE_TEST_NETNS"

// Main runs m, inside a fresh network namespace when running as root.
func Main(m *testing.M) int { return MainFunc(m.Run) }

// MainFunc is Main for a TestMain that does more than m.Run: run does it (starts envtest, runs
// the tests), in the namespace.
func MainFunc(run func() int) int {
	if os.Getenv(envNetns) != "" {
		// Inside: the namespace has only a down loopback.
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "netnstest: bringing up loopback: %v: %s\n", err, out)
			return 1
		}
		return run()
	}
	if os.Geteuid() != 0 {
		return run()
	}
	if _, err := exec.LookPath("ip"); err != nil {
		fmt.Fprintln(os.Stderr, "netnstest: iproute2's ip is required to create a test network namespace (apt-get install iproute2)")
		return 1
	}
	removeStaleNamespaces()
	name := fmt.Sprintf("%s%d", prefix, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "netnstest: creating network namespace %s: %v: %s\n", name, err, out)
		return 1
	}
	defer func() {
		// Detached processes (QEMU daemonizes) outlive a crashed test: end them with the namespace.
		killNamespacePids(name)
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "netnstest: deleting network namespace %s: %v: %s\n", name, err, out)
		}
	}()
	args := append([]string{"netns", "exec", name, os.Args[0]}, os.Args[1:]...)
	cmd := exec.Command("ip", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envNetns+"="+name)
	if err := cmd.Run(); err != nil {
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "netnstest: running tests in %s: %v\n", name, err)
		return 1
	}
	return 0
}

// Require returns the name of the test-made network namespace the test runs in. Without one (not
// root) it skips the test, or fails it where tests may not skip (testreq: CI=true or
// STARGATE_REQUIRE_VM_TESTS=1).
func Require(t testing.TB) string {
	t.Helper()
	name := os.Getenv(envNetns)
	if name == "" {
		testreq.Need(t, "root, to run inside a test-made network namespace (bridge, taps, iptables, VMs)",
			"run the tests as root: `sudo make test`")
	}
	return name
}

// killNamespacePids kills every process still running in the namespace.
func killNamespacePids(name string) {
	out, _ := exec.Command("ip", "netns", "pids", name).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeStaleNamespaces deletes namespaces left by test runs that died (their PID is gone): the
// package's (<prefix><pid>) and isolated tests' (<prefix><pid>-<n>).
func removeStaleNamespaces() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		owner, _, _ := strings.Cut(strings.TrimPrefix(e.Name(), prefix), "-")
		pid, err := strconv.Atoi(owner)
		if !strings.HasPrefix(e.Name(), prefix) || err != nil {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // its test run is alive
		}
		killNamespacePids(e.Name())
		_ = exec.Command("ip", "netns", "delete", e.Name()).Run()
	}
}
