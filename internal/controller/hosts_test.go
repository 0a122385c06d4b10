package controller_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/mockdc"
)

// host is a second datacenter host in a test: its own controller and its own (mock) machines.
type host struct {
	dc     *mockdc.Server
	url    string
	cancel context.CancelFunc
	done   chan struct{}
}

func startHost(t *testing.T, h *harness, id string, selector string, stepDelay time.Duration) *host {
	t.Helper()
	dc := mockdc.NewServer(mockdc.Config{StepDelay: stepDelay})
	srv := httptest.NewServer(dc)
	t.Cleanup(srv.Close)
	sel, err := labels.Parse(selector)
	if err != nil {
		t.Fatal(err)
	}
	opts := controller.Options{HostID: id, ServerSelector: sel, PollInterval: 50 * time.Millisecond}
	o := &host{dc: dc, url: srv.URL}
	o.cancel, o.done = startManager(t, env.Config, h.namespaces(), opts, &mockdc.Provider{BaseURL: srv.URL}, prometheus.NewRegistry())
	t.Cleanup(o.stop)
	return o
}

func (o *host) stop() {
	if o.cancel != nil {
		o.cancel()
		<-o.done
		o.cancel = nil
	}
}

// Two hosts whose selectors overlap share one management cluster: a Server has one owner, which
// alone runs its Operations; a relabel hands the Server over only once its repave ended, and the
// old host releases what it held; deletion is cleaned up by the host that holds the Server.
func TestTwoHostsOneOwnerPerServer(t *testing.T) {
	h := newHarness(t, time.Millisecond, controller.Options{})
	h.stop() // this test runs its own two hosts
	a := startHost(t, h, "host-a", "dc=x", 300*time.Millisecond)
	s := server("s1")
	s.Labels = map[string]string{"dc": "x"}
	h.create(s)
	h.create(profile("p", okUserData))
	h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool { return st.Host == "host-a" })

	b := startHost(t, h, "host-b", "dc in (x,y)", 300*time.Millisecond)
	h.create(repave("op1", "s1", "p"))
	h.waitPhase("op1", stargatev1.OperationRunning, 10*time.Second)
	eventually(t, 10*time.Second, func() (bool, string) {
		return hasEvent(h.events("s1"), "OwnedByAnotherHost"), "waiting for host-b's Warning"
	})

	// Relabel mid-repave: only host-b matches now. host-a finishes the repave it runs, then hands over.
	cur := h.server("s1")
	relabelled := cur.DeepCopy()
	relabelled.Labels["dc"] = "y"
	if err := env.Client.Patch(context.Background(), relabelled, client.MergeFrom(cur)); err != nil {
		t.Fatal(err)
	}
	h.waitPhase("op1", stargatev1.OperationSucceeded, 20*time.Second)
	if na, nb := a.dc.Repaves(h.ns, "s1"), b.dc.Repaves(h.ns, "s1"); na != 1 || nb != 0 {
		t.Fatalf("repaves on host-a %d, host-b %d: want the owner alone to run it", na, nb)
	}
	h.waitServer("s1", 60*time.Second, func(st stargatev1.ServerStatus) bool { return st.Host == "host-b" })
	if info, err := (&mockdc.Provider{BaseURL: a.url}).Inspect(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "s1"}); err != nil || info.Exists {
		t.Errorf("host-a still holds the machine after handing the Server over: %+v %v", info, err)
	}
	if fs := h.server("s1").Finalizers; controllerutil.ContainsFinalizer(h.server("s1"), controller.ServerFinalizer("host-a")) {
		t.Errorf("host-a's finalizer is left after the hand-over: %v", fs)
	}

	// The new owner runs the next repave; deleting the Server is cleaned up by it.
	h.create(repave("op2", "s1", "p"))
	h.waitPhase("op2", stargatev1.OperationSucceeded, 20*time.Second)
	if na, nb := a.dc.Repaves(h.ns, "s1"), b.dc.Repaves(h.ns, "s1"); na != 1 || nb != 1 {
		t.Errorf("after the hand-over: repaves on host-a %d, host-b %d, want 1 and 1", na, nb)
	}
	if err := env.Client.Delete(context.Background(), h.server("s1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "s1"}, &stargatev1.Server{})
		info, _ := (&mockdc.Provider{BaseURL: b.url}).Inspect(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "s1"})
		return err != nil && !info.Exists, fmt.Sprintf("server get: %v, host-b still has the machine: %v", err, info.Exists)
	})
}

func TestHostFinalizersAreValidNames(t *testing.T) {
	for _, id := range []string{"host-a", "Build.Machine_01", "a/b c", strings.Repeat("x", 200), "..."} {
		for _, f := range []string{controller.ServerFinalizer(id), controller.OperationFinalizer(id)} {
			name := strings.TrimPrefix(f, "stargate.io/")
			if len(name) > 63 || name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-._") != "" {
				t.Errorf("host %q: finalizer %q is not a qualified name", id, f)
			}
		}
	}
	if controller.ServerFinalizer("a/b") == controller.ServerFinalizer("a-b") {
		t.Error("two host identities share a finalizer")
	}
}
