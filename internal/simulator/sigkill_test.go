package simulator_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/hostnet"
)

// TestSIGKILLAtEveryStep kills the real simulator binary with SIGKILL inside each window of an
// installation and of a Server's deletion, restarts it on the same work directory with the same
// flags, and checks that it finishes the job and leaves exactly one QEMU process, tap, IP claim and
// VM directory for the Server (none after the deletion), and no golden image bake.
//
// The installation windows are hit for sure by wrapper scripts for qemu-img and
// qemu-system-x86_64 first on the simulator's PATH: while a pause file names a step (and,
// optionally, a path that must exist and a word its arguments must hold), the wrapper of that
// step writes a "reached" file and waits for a "release" file. One Operation goes through the
// installation's windows in the order it meets them, so its guest boots once, at the end; its
// profile has an installation, but with --max-parallel=1 the host has no capacity to bake it
// (the repave installs it itself). A second one, with capacity, bakes in the background:
//
//	(c) IP claimed and tap created, disk not yet begun: paused in `qemu-img info` of the base image
//	    that starts the disk's creation, armed only once the tap exists;
//	(a) during the disk's creation: paused in `qemu-img create` (its temp file exists);
//	(b) QEMU started (daemonized, pidfile written) but the instance-id not yet recorded: the
//	    qemu-system-x86_64 wrapper pauses after QEMU returned, before the simulator sees it return;
//	(d) during a Server's deletion: Release runs no binary, but it first asks the guest to power
//	    off over QMP; the test holds QEMU's one QMP connection, so Release's connection waits in
//	    the socket's backlog, where the test sees it before killing (QEMU, tap, IP all still there);
//	(e) a golden image bake VM running beside the second repave's (the bake's directory, tap and
//	    address made): paused after qemu-system-x86_64 daemonized the bake VM; the restarted
//	    simulator stops it and removes the bake, and the repave finishes.
func TestSIGKILLAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under TCG (minutes); skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	t.Logf("fault suite wall time: %s", faultSuite(t).Round(time.Second))
}

// BenchmarkFaultSuite reports the fault suite's wall time (one guest boot, four kills) for
// `make bench`.
func BenchmarkFaultSuite(b *testing.B) {
	for b.Loop() {
		b.ReportMetric(faultSuite(b).Seconds(), "s-wall")
	}
}

// faultSuite runs the SIGKILL windows described above and returns how long it took.
func faultSuite(t testing.TB) time.Duration {
	netnstest.Require(t)
	image := guestImage(t)
	realImg := testreq.Command(t, "qemu-img", "apt-get install -y qemu-utils")
	realQEMU := testreq.Command(t, "qemu-system-x86_64", "apt-get install -y qemu-system-x86")
	began := time.Now()
	ctx := context.Background()

	rig := newBinaryRig(t)
	env, tmp, simBin, kubeconfig := rig.env, rig.tmp, rig.simBin, rig.kubeconfig
	c := env.Client
	must := mustFor(t)
	ctl, wrapDir := filepath.Join(tmp, "ctl"), filepath.Join(tmp, "wrappers")
	must(writeWrappers(wrapDir, ctl, realImg, realQEMU))

	const (
		bridge  = "sgkill-br0"
		kns     = "sigkill"
		srvName = "worker-1"
	)
	work := filepath.Join(tmp, "work")
	flags := []string{"--kubeconfig", kubeconfig, "--work-dir", work, "--bridge", bridge, "--gateway", "192.168.120.1/24",
		"--no-nat", "--accel", "tcg", "--image-dir", filepath.Dir(image), "--host-id", "sigkill-test",
		"--metrics-bind-address", "0", "--health-probe-bind-address", "0", "--poll-interval", "1s", "--boot-timeout", "8m"}
	paths := simulatorPaths(t, simBin, work, kns, srvName)
	noBakes := append(slices.Clone(flags), "--max-parallel", "1") // no capacity left for a bake
	ipamDir := filepath.Join(paths["ipam_dir"], bridge)
	simLog := filepath.Join(tmp, "simulator.log")
	sim := &simProcess{t: t, bin: simBin, args: noBakes, path: wrapDir + ":" + os.Getenv("PATH"), logFile: simLog}

	// Whatever happens, no simulator, wrapper or QEMU outlives the test, nor the bridge.
	t.Cleanup(func() {
		sim.kill()
		_ = os.WriteFile(filepath.Join(ctl, "release"), nil, 0o600)
		_ = os.Remove(filepath.Join(ctl, "pause"))
		waitFor(t, "the wrappers to finish", 30*time.Second, func() bool { return len(pgrep(wrapDir)) == 0 })
		td := exec.Command(simBin, append([]string{"--teardown"}, flags...)...)
		if out, err := td.CombinedOutput(); err != nil {
			t.Errorf("simulator --teardown: %v\n%s", err, out)
		}
		for _, pid := range pgrep("qemu-system-x86_64.*" + work) {
			t.Errorf("QEMU pid %d survived the teardown: killing it", pid)
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
		if t.Failed() {
			if b, err := os.ReadFile(simLog); err == nil {
				t.Logf("simulator log (last lines):\n%s", tail(string(b), 60))
			}
		}
	})

	// arm makes the next invocation of step (img-info, img-create or qemu-start) pause, if the
	// guard path exists (or no guard is given) and its arguments hold match (or none is given).
	arm := func(step, guard, match string) {
		t.Helper()
		must(os.MkdirAll(ctl, 0o700))
		for _, f := range []string{"reached", "release", "left"} {
			_ = os.Remove(filepath.Join(ctl, f))
		}
		must(os.WriteFile(filepath.Join(ctl, "pause"), []byte(step+" "+cmp.Or(guard, "-")+" "+match+"\n"), 0o600))
	}
	// killInWindow waits until a wrapper paused, SIGKILLs the simulator, checks the host state the
	// window promises, then lets the wrapper finish (as the real binary would have) and disarms.
	killInWindow := func(name string, check func()) {
		t.Helper()
		waitFor(t, "window "+name, 6*time.Minute, func() bool {
			if sim.exited() {
				t.Fatalf("window %s: the simulator exited: see its log", name)
			}
			return exists(filepath.Join(ctl, "reached"))
		})
		sim.kill()
		t.Logf("window %s: simulator killed at %s", name, time.Since(began).Round(time.Second))
		check()
		must(os.Remove(filepath.Join(ctl, "pause")))
		must(os.WriteFile(filepath.Join(ctl, "release"), nil, 0o600))
		waitFor(t, "the paused wrapper to finish", time.Minute, func() bool { return exists(filepath.Join(ctl, "left")) })
	}
	expectFiles := func(window string, want map[string]bool) {
		t.Helper()
		for path, present := range want {
			if exists(path) != present {
				t.Errorf("window %s: %s exists=%v, want %v", window, path, !present, present)
			}
		}
	}

	must(c.Create(ctx, testenv.Namespace(kns)))
	must(c.Create(ctx, testenv.Namespace("stargate-system"))) // the host Lease's (--lease-namespace)
	mem, disk := resourceQ("1536Mi"), resourceQ("4Gi")
	must(c.Create(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: srvName, Namespace: kns},
		Spec: stargatev1.ServerSpec{CPUs: 2, Memory: &mem, Disk: &disk}}))
	must(c.Create(ctx, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: kns},
		Spec: stargatev1.ProvisioningProfileSpec{Image: stargatev1.ImageSource{URL: "file://" + image},
			Installation: &stargatev1.Installation{CloudInit: "#cloud-config\nruncmd:\n  - [sh, -c, 'echo baked > /etc/stargate-baked']\n"},
			CloudInit:    "#cloud-config\nruncmd:\n  - [sh, -c, 'echo STARGATE-SIGKILL $(cat /etc/stargate-baked) > /dev/ttyS0']\n"}}))
	bakesDir, goldenDir := paths["bakes_dir"], paths["golden_dir"]
	repave := func(name string) *stargatev1.Operation {
		t.Helper()
		op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kns}, Spec: stargatev1.OperationSpec{
			Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: srvName},
			ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "hello"}}}
		must(c.Create(ctx, op))
		return op
	}
	finished := func(op *stargatev1.Operation) {
		t.Helper()
		waitFor(t, op.Name+" to finish", 12*time.Minute, func() bool {
			must(c.Get(ctx, client.ObjectKeyFromObject(op), op))
			return op.Status.Phase.IsFinal()
		})
		if op.Status.Phase != stargatev1.OperationSucceeded {
			t.Fatalf("%s: %s: %s", op.Name, op.Status.Phase, op.Status.Message)
		}
		t.Logf("%s succeeded at %s: %s", op.Name, time.Since(began).Round(time.Second), firstLine(op.Status.Message))
	}
	// steady checks the host holds one VM of the Server and nothing else: no bake.
	steady := func(when string) {
		t.Helper()
		if n := len(qemuPIDs(t, work, realQEMU)); n != 1 {
			t.Errorf("%s: %d QEMU processes, want 1", when, n)
		}
		if taps, _ := hostnet.Taps(); len(taps) != 1 || taps[0] != paths["tap"] {
			t.Errorf("%s: taps %v, want [%s]", when, taps, paths["tap"])
		}
		if ips := dirNames(t, ipamDir); len(ips) != 1 {
			t.Errorf("%s: IP claims %v, want one", when, ips)
		}
		if vms := dirNames(t, filepath.Join(paths["vms_dir"], kns)); len(vms) != 1 || vms[0] != srvName {
			t.Errorf("%s: VM directories %v, want [%s]", when, vms, srvName)
		}
		if tmps := overlayTemps(paths["vm_dir"]); len(tmps) != 0 {
			t.Errorf("%s: disk temp files left in the VM directory: %v", when, tmps)
		}
		if bakes, golden := dirNames(t, bakesDir), dirNames(t, goldenDir); len(bakes) != 0 || len(golden) != 0 {
			t.Errorf("%s: bakes %v, golden images %v: want none", when, bakes, golden)
		}
	}

	// (c) After the IP claim and the tap, before the disk (the restarted simulator baked again).
	arm("img-info", "/sys/class/net/"+paths["tap"], "")
	sim.start()
	op := repave("repave-1")
	killInWindow("c (IP claimed, tap made, no disk yet)", func() {
		if ips := dirNames(t, ipamDir); len(ips) != 1 {
			t.Errorf("IP claims %v, want one", ips)
		}
		expectFiles("c", map[string]bool{"/sys/class/net/" + paths["tap"]: true, paths["disk"]: false, paths["instance_id"]: false})
		if tmps := overlayTemps(paths["vm_dir"]); len(tmps) != 0 {
			t.Errorf("window c: disk temp files %v already", tmps)
		}
	})

	// (a) During the disk's creation.
	arm("img-create", "", "")
	sim.start()
	killInWindow("a (qemu-img create running)", func() {
		if tmps := overlayTemps(paths["vm_dir"]); len(tmps) != 1 {
			t.Errorf("window a: disk temp files %v, want the one qemu-img is creating", tmps)
		}
		expectFiles("a", map[string]bool{paths["instance_id"]: false, paths["pidfile"]: false})
		if n := len(qemuPIDs(t, work, realQEMU)); n != 0 {
			t.Errorf("window a: %d QEMU processes", n)
		}
	})

	// (b) QEMU started, instance-id not recorded.
	arm("qemu-start", "", "")
	sim.start()
	killInWindow("b (QEMU running, no instance-id)", func() {
		expectFiles("b", map[string]bool{paths["pidfile"]: true, paths["disk"]: true, paths["instance_id"]: false})
		if n := len(qemuPIDs(t, work, realQEMU)); n != 1 {
			t.Errorf("window b: %d QEMU processes, want the one just started", n)
		}
	})
	orphan := readPID(t, paths["pidfile"])

	// Restarted without pauses: the installation is redone once and the guest boots, its
	// installation run by the repave itself.
	sim.start()
	finished(op)
	if pid := readPID(t, paths["pidfile"]); pid == orphan || exists(fmt.Sprintf("/proc/%d", orphan)) {
		t.Errorf("the QEMU started before the kill in window b (pid %d) still runs (current pid %d)", orphan, pid)
	}
	steady("after repave-1")
	if console, _ := os.ReadFile(paths["console"]); !strings.Contains(string(console), "STARGATE-SIGKILL baked") {
		t.Error("after repave-1: the guest did not run the installation and then the per-instance user-data (no STARGATE-SIGKILL baked on its console)")
	}

	// (e) With capacity, a second repave has the golden image baked in the background once its own
	// guest is up: killed while the bake VM runs beside the Server's. The restarted simulator
	// removes the bake.
	sim.kill()
	sim.args = flags
	arm("qemu-start", "", "bake.")
	sim.start()
	op = repave("repave-2")
	killInWindow("e (golden image bake VM running)", func() {
		if bakes := dirNames(t, bakesDir); len(bakes) != 1 {
			t.Errorf("window e: bakes %v, want one", bakes)
		}
		if ips := dirNames(t, ipamDir); len(ips) != 2 {
			t.Errorf("window e: IP claims %v, want the Server's and the bake VM's", ips)
		}
		if n := len(qemuPIDs(t, bakesDir, realQEMU)); n != 1 {
			t.Errorf("window e: %d bake VMs, want 1", n)
		}
	})
	sim.start()
	finished(op)
	waitFor(t, "the restarted simulator to remove the bake", 2*time.Minute, func() bool {
		return len(dirNames(t, bakesDir)) == 0 && len(qemuPIDs(t, bakesDir, realQEMU)) == 0
	})
	steady("after repave-2")

	// (d) During the Server's deletion. Release asks the guest over QMP to power off first; the
	// test holds QEMU's only QMP connection, so the simulator's connection waits in the socket's
	// backlog (for up to 5s, then Release would go on to SIGKILL QEMU): seen there, it is killed.
	qmp, err := net.DialTimeout("unix", paths["qmp_socket"], 5*time.Second)
	must(err)
	must(qmp.SetReadDeadline(time.Now().Add(10 * time.Second)))
	if greeting, err := bufio.NewReader(qmp).ReadString('\n'); err != nil || !strings.Contains(greeting, "QMP") {
		t.Fatalf("QMP greeting %q: %v", greeting, err)
	}
	srv := &stargatev1.Server{}
	must(c.Get(ctx, client.ObjectKey{Namespace: kns, Name: srvName}, srv))
	must(c.Delete(ctx, srv))
	waitFor(t, "Release to connect to QMP", time.Minute, func() bool { return qmpPending(t, paths["qmp_socket"]) > 0 })
	sim.kill()
	t.Logf("window d (Release asking QEMU to power off): simulator killed at %s", time.Since(began).Round(time.Second))
	_ = qmp.Close()
	if n := len(qemuPIDs(t, work, realQEMU)); n != 1 || !exists("/sys/class/net/"+paths["tap"]) || len(dirNames(t, ipamDir)) != 1 {
		t.Errorf("window d: %d QEMU processes, tap present %v, IP claims %v: want Release's work all ahead",
			n, exists("/sys/class/net/"+paths["tap"]), dirNames(t, ipamDir))
	}
	sim.start()
	waitFor(t, "the Server's deletion", 2*time.Minute, func() bool {
		err := c.Get(ctx, client.ObjectKey{Namespace: kns, Name: srvName}, &stargatev1.Server{})
		return err != nil && client.IgnoreNotFound(err) == nil
	})
	if n := len(qemuPIDs(t, work, realQEMU)); n != 0 {
		t.Errorf("after the deletion: %d QEMU processes", n)
	}
	if taps, _ := hostnet.Taps(); len(taps) != 0 {
		t.Errorf("after the deletion: taps %v", taps)
	}
	if ips := dirNames(t, ipamDir); len(ips) != 0 {
		t.Errorf("after the deletion: IP claims %v", ips)
	}
	if vms := dirNames(t, paths["vms_dir"]); len(vms) != 0 {
		t.Errorf("after the deletion: VM directories %v", vms)
	}
	sim.kill()
	return time.Since(began)
}

// simProcess is the simulator binary run as a child process, killed with SIGKILL and restarted.
type simProcess struct {
	t       testing.TB
	bin     string
	args    []string
	path    string // PATH, with the wrappers first
	logFile string
	cmd     *exec.Cmd
	done    chan struct{}
}

func (s *simProcess) start() {
	s.t.Helper()
	log, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	fmt.Fprintf(log, "=== start %s\n", time.Now().Format(time.TimeOnly))
	cmd := exec.Command(s.bin, s.args...)
	cmd.Env = append(os.Environ(), "PATH="+s.path)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		s.t.Fatal(err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(s.done)
	}()
}

// kill sends SIGKILL to the simulator (only to it: its children live on, as after a crash).
func (s *simProcess) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func (s *simProcess) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// writeWrappers writes qemu-img and qemu-system-x86_64 into dir: both run the real binary, but
// pause (writing ctl/reached, waiting for ctl/release) where ctl/pause says, and write ctl/left
// once the real binary has finished after a pause.
func writeWrappers(dir, ctl, realImg, realQEMU string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	const pause = `pause() {
	[ -f "$CTL/pause" ] || return 1
	read -r step guard match < "$CTL/pause"
	[ "$step" = "$1" ] || return 1
	shift
	[ "$guard" = - ] || [ -e "$guard" ] || return 1
	case "$*" in *"$match"*) ;; *) return 1 ;; esac
	: > "$CTL/reached"
	while [ ! -e "$CTL/release" ]; do sleep 0.1; done
}
`
	img := "#!/bin/sh\n# test wrapper (sigkill_test.go)\nCTL=" + ctl + "\n" + pause +
		`paused=0
if pause "img-$1" "$@"; then paused=1; fi
` + realImg + ` "$@"
rc=$?
[ $paused = 0 ] || : > "$CTL/left"
exit $rc
`
	qemu := "#!/bin/sh\n# test wrapper (sigkill_test.go)\nCTL=" + ctl + "\n" + pause + realQEMU + ` "$@"
rc=$?
if pause qemu-start "$@"; then : > "$CTL/left"; fi
exit $rc
`
	if err := os.WriteFile(filepath.Join(dir, "qemu-img"), []byte(img), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "qemu-system-x86_64"), []byte(qemu), 0o755)
}

// simulatorPaths asks the simulator binary where it keeps a Server's things.
func simulatorPaths(t testing.TB, bin, work, ns, server string) map[string]string {
	t.Helper()
	out, err := exec.Command(bin, "paths", "--work-dir", work, "--namespace", ns, "--server", server).Output()
	if err != nil {
		t.Fatalf("simulator paths: %v", err)
	}
	paths := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			paths[k] = v
		}
	}
	for _, k := range []string{"vms_dir", "ipam_dir", "vm_dir", "disk", "pidfile", "instance_id", "tap", "qmp_socket"} {
		if paths[k] == "" {
			t.Fatalf("simulator paths printed no %s:\n%s", k, out)
		}
	}
	return paths
}

// overlayTemps lists the temp files of a disk being created in a VM directory.
func overlayTemps(vmDir string) []string {
	m, _ := filepath.Glob(filepath.Join(vmDir, ".*.tmp-*"))
	return m
}

// dirNames lists a directory's entries but hidden ones; a missing directory is empty.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") { // lock files
			names = append(names, e.Name())
		}
	}
	return names
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readPID(t testing.TB, pidfile string) int {
	t.Helper()
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pidfile %s: %v", pidfile, err)
	}
	return pid
}

// qemuPIDs returns the QEMU processes (the real binary, not its wrapper) whose command line
// mentions dir.
func qemuPIDs(t testing.TB, dir, realQEMU string) []int {
	t.Helper()
	want, err := filepath.EvalSymlinks(realQEMU)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, pid := range pgrep("qemu-system-x86_64.*" + dir) {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// qmpPending returns how many connections wait to be accepted on the QMP socket (ss's Recv-Q of
// a listening Unix socket).
func qmpPending(t testing.TB, socket string) int {
	t.Helper()
	out, err := exec.Command("ss", "-xlnH").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && f[4] == socket {
			n, _ := strconv.Atoi(f[2])
			return n
		}
	}
	return 0
}

// pgrep returns the PIDs of processes whose command line matches pattern.
func pgrep(pattern string) []int {
	out, _ := exec.Command("pgrep", "-f", pattern).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitFor polls ok until it holds, failing the test after timeout.
func waitFor(t testing.TB, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !ok(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
