package testenv

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const orphanChildEnv = "STARGATE_TESTENV_ORPHAN_CHILD"

// TestEnvtestDiesWithItsTest SIGKILLs a test process that started envtest and checks that its
// etcd and kube-apiserver go too.
func TestEnvtestDiesWithItsTest(t *testing.T) {
	if os.Getenv(orphanChildEnv) != "" { // the child: start envtest, say which groups, wait to be killed
		if _, err := Start(); err != nil {
			t.Fatal(err)
		}
		groups, err := childGroups(os.Getpid(), "etcd", "kube-apiserver")
		if err != nil {
			t.Fatal(err)
		}
		var pids []string
		for _, g := range groups {
			pids = append(pids, strconv.Itoa(g))
		}
		os.Stdout.WriteString("GROUPS " + strings.Join(pids, " ") + "\n")
		time.Sleep(time.Hour)
		return
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run the tests with `make test`")
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestEnvtestDiesWithItsTest$")
	cmd.Env = append(os.Environ(), orphanChildEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var groups []int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "GROUPS "); ok {
			for _, f := range strings.Fields(rest) {
				g, _ := strconv.Atoi(f)
				groups = append(groups, g)
			}
			break
		}
	}
	if len(groups) != 2 {
		_ = cmd.Process.Kill()
		t.Fatalf("the child reported the process groups %v, want etcd's and kube-apiserver's", groups)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	deadline := time.Now().Add(time.Minute)
	for _, g := range groups {
		for running(g) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(-g, syscall.SIGKILL)
				t.Fatalf("process %d (envtest's) still runs a minute after its test process was killed", g)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// running reports whether pid is a process that has not exited (a zombie has: it only waits to be
// reaped by whoever adopted it).
func running(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	end := strings.LastIndexByte(string(data), ')')
	return err != nil || end < 0 || !strings.HasPrefix(string(data[end+1:]), " Z")
}
