package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/mockdc"
	"stargate.io/stargate/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

// simulatorBinary builds cmd/simulator once per test binary: the fleet runs the real controller
// as its own process, so that its CPU time and memory are its own.
var simulatorBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "stargate-fleet-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "simulator")
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building the simulator needs the go command on PATH: %w", err)
	}
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/simulator")
	cmd.Dir = testenv.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the simulator: %w\n%s", err, out)
	}
	return bin, nil
})

// fleet is one controller process (a host of the mock datacenter) managing one namespace.
type fleet struct {
	t       testing.TB
	ns      string
	dc      *mockdc.Server
	c       client.WithWatch // the users' client: fast, so that it never bounds what is measured
	metrics string           // the controller's /metrics URL
	pprof   string           // the controller's /debug/pprof URL
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *os.File

	profile string
	servers int
	nextOp  atomic.Int64
}

var fleetCounter atomic.Int64

// startFleet starts a mock datacenter whose repave steps take stepDelay each, and the simulator
// binary driving it for a namespace of its own, with the product's defaults otherwise.
func startFleet(t testing.TB, stepDelay time.Duration, flags ...string) *fleet {
	t.Helper()
	bin, err := simulatorBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f := &fleet{t: t, ns: fmt.Sprintf("fleet-%d", fleetCounter.Add(1)), profile: "p", exited: make(chan struct{})}
	if err := env.Client.Create(ctx, testenv.Namespace(f.ns)); err != nil {
		t.Fatal(err)
	}
	cfg := *env.Config
	cfg.QPS, cfg.Burst = 5000, 5000
	if f.c, err = client.NewWithWatch(&cfg, client.Options{Scheme: env.Scheme}); err != nil {
		t.Fatal(err)
	}
	f.dc = mockdc.NewServer(mockdc.Config{StepDelay: stepDelay})
	srv := httptest.NewServer(f.dc)
	t.Cleanup(srv.Close)

	tmp := t.TempDir()
	kubeconfig := filepath.Join(tmp, "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig, ""); err != nil {
		t.Fatal(err)
	}
	metricsAddr, pprofAddr := freeAddr(t), freeAddr(t)
	f.metrics, f.pprof = "http://"+metricsAddr+"/metrics", "http://"+pprofAddr+"/debug/pprof"
	args := append([]string{"--provider=mock", "--mock-url", srv.URL, "--kubeconfig", kubeconfig, "--host-id", f.ns,
		"--namespace", f.ns, "--lease-namespace", f.ns, "--work-dir", filepath.Join(tmp, "work"),
		"--metrics-bind-address", metricsAddr, "--pprof-bind-address", pprofAddr, "--health-probe-bind-address", "0", "--max-parallel", "0"}, flags...)
	f.cmd = exec.Command(bin, args...)
	if f.log, err = os.Create(filepath.Join(tmp, "simulator.log")); err != nil {
		t.Fatal(err)
	}
	f.cmd.Stdout, f.cmd.Stderr = f.log, f.log
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = f.cmd.Wait(); close(f.exited) }()
	t.Logf("controller: pid %d, %s, %s, log %s", f.cmd.Process.Pid, f.metrics, f.pprof, f.log.Name())
	t.Cleanup(f.stop)
	f.create(&stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: f.profile}, Spec: stargatev1.ProvisioningProfileSpec{
		CloudInit: "#cloud-config\nruncmd: [[touch, /ok]]\n", Image: stargatev1.ImageSource{URL: "file:///images/fleet.qcow2"}}})
	f.waitFor("the controller's metrics", 2*time.Minute, func() (bool, error) {
		_, err := f.scrape()
		return err == nil, nil
	})
	return f
}

// freeAddr is a loopback address with a port nobody listens on.
func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (f *fleet) stop() {
	if f.cmd.Process != nil {
		_ = f.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-f.exited:
		case <-time.After(30 * time.Second):
			_ = f.cmd.Process.Kill()
			<-f.exited
		}
	}
	_ = f.log.Close()
}

// failf ends the test with the controller's last log lines.
func (f *fleet) failf(format string, args ...any) {
	f.t.Helper()
	out, _ := os.ReadFile(f.log.Name())
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	f.t.Fatalf(format+"\ncontroller log (last lines):\n%s", append(args, strings.Join(lines[max(0, len(lines)-30):], "\n"))...)
}

func (f *fleet) create(obj client.Object) {
	f.t.Helper()
	obj.SetNamespace(f.ns)
	if err := f.c.Create(context.Background(), obj); err != nil {
		f.t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}

// parallel runs do(i) for i in [from, to) on 16 workers (creations are bound by round trips).
func parallel(from, to int, do func(i int) error) error {
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= to {
					return
				}
				if err := do(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func serverName(i int) string { return fmt.Sprintf("s%05d", i) }

// grow creates Servers until the fleet has n, and waits until the controller owns every one and
// wrote its status. It
// counts them on a watch: listing thousands of Servers over and over would load the API server
// more than the controller does.
func (f *fleet) grow(n int) time.Duration {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	allOwned := make(chan struct{})
	watchErr := make(chan error, 1)
	go func() { // read while creating: the API server drops a watcher that falls behind
		owned := map[string]bool{}
		for ctx.Err() == nil {
			// Without a resource version a watch starts with every existing Server, so a
			// new watch (the API server ends them now and then) counts from scratch.
			w, err := f.c.Watch(ctx, &stargatev1.ServerList{}, client.InNamespace(f.ns))
			if err != nil {
				watchErr <- err
				return
			}
			for ev := range w.ResultChan() {
				// Owned, and its status written: the controller has nothing left to do for it.
				if s, ok := ev.Object.(*stargatev1.Server); ok && s.Status.Host == f.ns && s.Status.State != "" {
					owned[s.Name] = true
				}
				if len(owned) == n {
					w.Stop()
					close(allOwned)
					return
				}
			}
			w.Stop()
		}
	}()
	start := time.Now()
	err := parallel(f.servers, n, func(i int) error {
		s := &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: serverName(i), Namespace: f.ns}}
		return f.c.Create(ctx, s)
	})
	if err != nil {
		f.failf("creating servers: %v", err)
	}
	select {
	case <-allOwned:
	case err := <-watchErr:
		f.failf("watching servers: %v", err)
	case <-f.exited:
		f.failf("the controller exited while taking %d Servers", n)
	case <-time.After(15 * time.Minute):
		f.failf("the controller did not own all %d Servers within 15 minutes", n)
	}
	f.servers = n
	return time.Since(start)
}

// waitFor polls cond every 200 ms until it holds or timeout passes; a controller that exits or an
// error ends the test.
func (f *fleet) waitFor(what string, timeout time.Duration, cond func() (bool, error)) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			f.failf("waiting for %s: %v", what, err)
		}
		if ok {
			return
		}
		select {
		case <-f.exited:
			f.failf("the controller exited while waiting for %s", what)
		default:
		}
		if time.Now().After(deadline) {
			f.failf("%s did not happen within %s", what, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// runResult is what one run of Operations measured.
type runResult struct {
	ops       int
	elapsed   time.Duration
	latencies []time.Duration // creation to Succeeded, as the users' watch saw it, sorted
	before    sample
	after     sample
}

func (r runResult) percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(float64(len(r.latencies))*p))]
}

// run creates ops repaves, at most inflight unfinished at once, each on a Server that has none
// running (Servers are taken in turn), and waits until all Succeeded. Operations that already
// finished in an earlier run are deleted first, so that each run's fleet is the same apart from
// its size.
func (f *fleet) run(ops, inflight int) runResult {
	f.t.Helper()
	ctx := context.Background()
	if err := f.c.DeleteAllOf(ctx, &stargatev1.Operation{}, client.InNamespace(f.ns)); err != nil {
		f.failf("deleting finished operations: %v", err)
	}
	f.waitFor("finished operations to be gone", 5*time.Minute, func() (bool, error) {
		var list stargatev1.OperationList
		err := f.c.List(ctx, &list, client.InNamespace(f.ns))
		return len(list.Items) == 0, err
	})
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()

	var mu sync.Mutex
	created := map[string]time.Time{}
	var latencies []time.Duration
	slots := make(chan struct{}, inflight)
	failed := make(chan string, 2)
	allDone := make(chan struct{})
	events := make(chan watch.Event)
	go func() { // one watch after another: the API server ends them now and then
		defer close(events)
		for watchCtx.Err() == nil {
			w, err := f.c.Watch(watchCtx, &stargatev1.OperationList{}, client.InNamespace(f.ns))
			if err != nil {
				if watchCtx.Err() == nil {
					failed <- fmt.Sprintf("watching operations: %v", err)
				}
				return
			}
			for ev := range w.ResultChan() {
				select {
				case events <- ev:
				case <-watchCtx.Done():
				}
			}
			w.Stop()
		}
	}()
	go func() { // the users' view: when each Operation is seen Succeeded
		seen := map[string]bool{}
		for ev := range events {
			op, ok := ev.Object.(*stargatev1.Operation)
			if !ok || seen[op.Name] {
				continue
			}
			switch op.Status.Phase {
			case stargatev1.OperationSucceeded:
				now := time.Now()
				seen[op.Name] = true
				mu.Lock()
				latencies = append(latencies, now.Sub(created[op.Name]))
				n := len(latencies)
				mu.Unlock()
				<-slots
				if n == ops {
					close(allDone)
					return
				}
			case stargatev1.OperationFailed:
				seen[op.Name] = true
				select {
				case failed <- fmt.Sprintf("operation %s failed: %s", op.Name, op.Status.Message):
				default:
				}
			}
		}
	}()

	before := f.sample()
	start := time.Now()
	createErr := make(chan error, 1)
	go func() {
		createErr <- parallel(0, ops, func(int) error {
			slots <- struct{}{}
			n := int(f.nextOp.Add(1))
			name := fmt.Sprintf("op%06d", n)
			op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns}, Spec: stargatev1.OperationSpec{
				Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: serverName(n % f.servers)},
				ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: f.profile}}}
			mu.Lock()
			created[name] = time.Now()
			mu.Unlock()
			return f.c.Create(ctx, op)
		})
	}()
	select {
	case <-allDone:
	case msg := <-failed:
		f.failf("%s", msg)
	case err := <-createErr:
		if err != nil {
			f.failf("creating operations: %v", err)
		}
		select {
		case <-allDone:
		case msg := <-failed:
			f.failf("%s", msg)
		case <-time.After(20 * time.Minute):
			f.failf("%d operations did not all succeed within 20 minutes", ops)
		}
	case <-time.After(20 * time.Minute):
		f.failf("%d operations did not all succeed within 20 minutes", ops)
	}
	res := runResult{ops: ops, elapsed: time.Since(start), before: before, after: f.sample()}
	mu.Lock()
	res.latencies = slices.Clone(latencies)
	mu.Unlock()
	slices.Sort(res.latencies)
	return res
}

// sample is the controller's counters at one moment, from its own /metrics.
type sample struct {
	at       time.Time
	requests map[string]float64 // by HTTP method (LIST and WATCH are GETs)
	cpu      float64            // seconds
	rss      float64            // bytes
	heap     float64            // bytes in use by Go objects
}

func (f *fleet) sample() sample {
	f.t.Helper()
	s, err := f.scrape()
	if err != nil {
		f.failf("reading the controller's metrics: %v", err)
	}
	return s
}

// memory samples the controller after a garbage collection (its pprof heap endpoint runs one), so
// that what is reported is what the fleet keeps, not garbage of the last run; the heap profile is
// written to dir when it is not empty.
func (f *fleet) memory(dir, name string) sample {
	f.t.Helper()
	resp, err := http.Get(f.pprof + "/heap?gc=1") //nolint:noctx // loopback, the test's own process
	if err != nil {
		f.failf("collecting the controller's garbage: %v", err)
	}
	defer resp.Body.Close()
	out := io.Discard
	if dir != "" {
		file, err := os.Create(filepath.Join(dir, name+".controller-heap.pprof"))
		if err != nil {
			f.failf("%v", err)
		}
		defer file.Close()
		out = file
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		f.failf("reading the controller's heap profile: %v", err)
	}
	return f.sample()
}

func (f *fleet) scrape() (sample, error) {
	s := sample{at: time.Now(), requests: map[string]float64{}}
	resp, err := http.Get(f.metrics) //nolint:noctx // loopback, the test's own process
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET %s: %s", f.metrics, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return s, fmt.Errorf("parsing %s: %w", f.metrics, err)
	}
	value := func(name string) (float64, error) {
		fam, ok := families[name]
		if !ok || len(fam.Metric) == 0 {
			return 0, fmt.Errorf("the controller exports no %s", name)
		}
		m := fam.Metric[0]
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), nil
		case m.Counter != nil:
			return m.Counter.GetValue(), nil
		}
		return 0, fmt.Errorf("%s is neither a gauge nor a counter", name)
	}
	if s.cpu, err = value("process_cpu_seconds_total"); err != nil {
		return s, err
	}
	if s.rss, err = value("process_resident_memory_bytes"); err != nil {
		return s, err
	}
	if s.heap, err = value("go_memstats_heap_inuse_bytes"); err != nil {
		return s, err
	}
	fam, ok := families["rest_client_requests_total"]
	if !ok {
		return s, errors.New("the controller exports no rest_client_requests_total")
	}
	for _, m := range fam.Metric {
		for _, l := range m.Label {
			if l.GetName() == "method" {
				s.requests[l.GetValue()] += m.Counter.GetValue()
			}
		}
	}
	return s, nil
}

// writes are the requests that change something.
func (s sample) writes() float64 {
	return s.requests["POST"] + s.requests["PUT"] + s.requests["PATCH"] + s.requests["DELETE"]
}

// objectWrites counts the changes to Servers, Operations and Events of the fleet's namespace
// that the users' watches see during d: what "nothing happening" must keep at zero.
func (f *fleet) objectWrites(d time.Duration) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	counts := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var firstErr error
	for kind, list := range map[string]client.ObjectList{"Server": &stargatev1.ServerList{}, "Operation": &stargatev1.OperationList{},
		"Event": &corev1.EventList{}} {
		// Watch from the newest resource version: only changes made during d are delivered.
		if err := f.c.List(ctx, list, client.InNamespace(f.ns), client.Limit(1)); err != nil {
			return nil, err
		}
		rv := list.(metav1.ListInterface).GetResourceVersion()
		w, err := f.c.Watch(ctx, list, client.InNamespace(f.ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv}})
		if err != nil {
			return nil, err
		}
		wg.Go(func() {
			defer w.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case ev, ok := <-w.ResultChan():
					if !ok {
						return
					}
					mu.Lock()
					if ev.Type == watch.Error {
						firstErr = fmt.Errorf("watching %ss: %v", kind, ev.Object)
					} else {
						counts[kind]++
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return counts, firstErr
}

var profiling sync.Mutex

// profileAPIServer writes a CPU profile of the API server, taken over d, to path: what bounds a
// fleet on one machine is often the API server, not the controller.
func profileAPIServer(path string, d time.Duration) error {
	profiling.Lock() // the API server takes one CPU profile at a time
	defer profiling.Unlock()
	hc, err := rest.HTTPClientFor(env.Config)
	if err != nil {
		return err
	}
	resp, err := hc.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimRight(env.Config.Host, "/"), int(d.Seconds()))) //nolint:noctx // bounded by d
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("API server profile: %s", resp.Status)
	}
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}
