package netnstest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// rendezvous is a directory shared by the isolated tests of one run, named after the package-level
// binary's pid, read from an isolated test's namespace (<prefix><pid>-<n>).
func rendezvous(t *testing.T, ns string) string {
	t.Helper()
	owner, _, ok := strings.Cut(strings.TrimPrefix(ns, prefix), "-")
	if !ok {
		t.Fatalf("namespace %q is not an isolated test's", ns)
	}
	dir := filepath.Join(os.TempDir(), "netnstest-rendezvous-"+owner)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The two isolated tests below run at the same time, each in a namespace of its own: each
// records its namespace's identity, then waits until it sees the other's.
func TestIsolatedA(t *testing.T) { isolatedPeer(t, "a", "b") }
func TestIsolatedB(t *testing.T) { isolatedPeer(t, "b", "a") }

func isolatedPeer(t *testing.T, me, peer string) {
	if RanIsolated(t) {
		return
	}
	ns := os.Getenv(envNetns)
	if os.Getenv(envIsolated) != t.Name() || !strings.HasPrefix(ns, prefix) {
		t.Fatalf("the isolated test runs with %s=%q %s=%q", envNetns, ns, envIsolated, os.Getenv(envIsolated))
	}
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	dir := rendezvous(t, ns)
	if err := os.WriteFile(filepath.Join(dir, me), []byte(self), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		other, err := os.ReadFile(filepath.Join(dir, peer))
		if err == nil {
			if string(other) == self {
				t.Fatalf("tests %s and %s share network namespace %s", me, peer, self)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("test %s never ran while %s did: isolated tests must run side by side", peer, me)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRelayReadsTheVerdict(t *testing.T) {
	cases := []struct {
		name, out string
		want      childVerdict
	}{
		{"pass", "=== RUN   TestX\n    x_test.go:1: hello\n--- PASS: TestX (1.00s)\nPASS\n", childVerdict{passed: true}},
		{"fail", "=== RUN   TestX\n--- FAIL: TestX (1.00s)\nFAIL\n", childVerdict{}},
		{"other test passes", "--- PASS: TestXY (1.00s)\n", childVerdict{}},
		{"skip", "=== RUN   TestX\n--- SKIP: TestX (0.00s)\n    x_test.go:9: needs root\nPASS\n", childVerdict{skipped: true, skipReason: "x_test.go:9: needs root "}},
	}
	for _, tc := range cases {
		var b strings.Builder
		if got := relay(&b, strings.NewReader(tc.out), "TestX"); got != tc.want {
			t.Errorf("%s: verdict %+v, want %+v", tc.name, got, tc.want)
		}
		if !strings.Contains(b.String(), "    | ") {
			t.Errorf("%s: output not relayed: %q", tc.name, b.String())
		}
	}
}
