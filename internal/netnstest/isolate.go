package netnstest

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// envIsolated is set in a test binary re-executed by Isolate to the name of the one test it runs.
const envIsolated = "STARGATE_TEST_ISOLATED"

// isolatedSeq numbers the namespaces of one test binary's isolated tests.
var isolatedSeq atomic.Int64

// RanIsolated runs the calling test in a network namespace of its own, side by side with the
// package's other isolated tests (it calls t.Parallel). Tests that boot VMs use it: each gets its
// own bridge, taps, addresses and envtest, so independent ones run at once and none sees another's
// devices. Call it first:
//
//	if netnstest.RanIsolated(t) {
//		return // it ran in a namespace of its own; its output and verdict are above
//	}
//
// As root, in the package's namespace (see Main), it creates a fresh namespace, re-executes the
// test binary there for this one test (`ip netns exec NS binary -test.run '^Name$'`), copies the
// child's output into this test's, passes, fails or skips as the child did, and returns true; the
// namespace and every process in it are gone when the test ends. In the child it returns false at
// once, and the test body runs there. Without root it stops the test as Require does.
func RanIsolated(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envIsolated) == t.Name() {
		return false
	}
	Require(t)
	t.Parallel()
	name := fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), isolatedSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("creating network namespace %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		killNamespacePids(name)
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("deleting network namespace %s: %v: %s", name, err, out)
		}
	})

	ctx := context.Background()
	if deadline, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline.Add(-30*time.Second)) // time left to report
		defer cancel()
	}
	args := []string{"netns", "exec", name, os.Args[0], "-test.run", "^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v", "-test.count=1"}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	if f := flag.Lookup("test.timeout"); f != nil {
		args = append(args, "-test.timeout="+f.Value.String())
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), envNetns+"="+name, envIsolated+"="+t.Name())
	// A test binary killed outright (not by its timeout) takes its isolated children with it; what
	// they started is killed with their namespace by the next run (removeStaleNamespaces).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("running %s in network namespace %s: %v", t.Name(), name, err)
	}
	verdict := relay(t.Output(), out, t.Name())
	err = cmd.Wait()
	switch {
	case verdict.skipped && err == nil:
		t.Skipf("skipped in its network namespace: %s", verdict.skipReason)
	case err != nil:
		code := -1
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		t.Fatalf("%s failed in network namespace %s (exit %d, %v): its output is above", t.Name(), name, code, context.Cause(ctx))
	case !verdict.passed:
		t.Fatalf("%s did not run in network namespace %s (no PASS line from the re-executed test binary)", t.Name(), name)
	}
	return true
}

// childVerdict is what the re-executed test binary said about the test.
type childVerdict struct {
	passed, skipped bool
	skipReason      string
}

// relay copies the child's output to w, indented, and reads its verdict on test from it.
func relay(w io.Writer, r io.Reader, test string) childVerdict {
	var v childVerdict
	inSkip := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintf(w, "    | %s\n", line)
		switch {
		case strings.HasPrefix(line, "--- PASS: "+test+" "):
			v.passed = true
		case strings.HasPrefix(line, "--- SKIP: "+test+" "):
			v.skipped, inSkip = true, true
		case inSkip && strings.HasPrefix(line, "    "):
			v.skipReason += strings.TrimSpace(line) + " "
		default:
			inSkip = false
		}
	}
	_, _ = io.Copy(w, r) // a line longer than the buffer: the rest, unindented
	return v
}
