package controller_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/hostlease"
	"stargate.io/stargate/internal/mockdc"
)

const testGrace = 2 * time.Second

// liveHost is a host that holds its Lease and is a candidate for the host observer, as the
// simulator runs one (internal/app).
type liveHost struct {
	*host
	id, selector string
	h            *harness
}

func startLiveHost(t *testing.T, h *harness, id, selector string, dc *mockdc.Server) *liveHost {
	t.Helper()
	if dc == nil {
		dc = mockdc.NewServer(mockdc.Config{StepDelay: 20 * time.Millisecond})
	}
	srv := httptest.NewServer(dc)
	t.Cleanup(srv.Close)
	l := &liveHost{host: &host{dc: dc, url: srv.URL}, id: id, selector: selector, h: h}
	l.start(t)
	return l
}

// start takes the host's Lease (in the test's namespace), then runs its controllers.
func (l *liveHost) start(t *testing.T) {
	t.Helper()
	lease, err := hostlease.Acquire(context.Background(), hostlease.Config{Client: env.Client, Namespace: l.h.ns, HostID: l.id,
		RenewInterval: 200 * time.Millisecond, GracePeriod: testGrace})
	if err != nil {
		t.Fatal(err)
	}
	sel, err := labels.Parse(l.selector)
	if err != nil {
		t.Fatal(err)
	}
	opts := controller.Options{HostID: l.id, ServerSelector: sel, PollInterval: 50 * time.Millisecond,
		Liveness: &controller.Liveness{Namespace: l.h.ns, Grace: testGrace, Interval: 100 * time.Millisecond,
			Identity: lease.Holder(), Scope: l.h.ns, ElectionLease: time.Second}}
	l.cancel, l.done = startManager(t, env.Config, l.h.namespaces(), opts, &mockdc.Provider{BaseURL: l.url}, prometheus.NewRegistry(), lease)
	t.Cleanup(l.stop)
}

func hostReachable(conds []metav1.Condition) string {
	if c := meta.FindStatusCondition(conds, stargatev1.ConditionHostReachable); c != nil {
		return string(c.Status) + "/" + c.Reason
	}
	return ""
}

// Two live hosts with overlapping selectors: one owns the Server. When the owner stops renewing
// its Lease, the Server and its waiting Operation show HostLost within the grace period, the
// other host starts nothing, and nothing fails; when the owner comes back it says so, and runs
// the Operation.
func TestLostHostIsShownAndNeverTaken(t *testing.T) {
	h, owner, other := twoHostsOneServer(t)
	ownerID := owner.id

	owner.stop()
	stopped := time.Now()
	h.create(repave("op2", "s1", "p"))
	srv := h.waitServer("s1", testGrace+5*time.Second, func(st stargatev1.ServerStatus) bool {
		return hostReachable(st.Conditions) == "False/HostLost"
	})
	if took := time.Since(stopped); took < testGrace {
		t.Errorf("declared lost after %s, before the grace period %s", took, testGrace)
	}
	c := meta.FindStatusCondition(srv.Status.Conditions, stargatev1.ConditionHostReachable)
	if srv.Status.PowerState != stargatev1.PowerUnknown || !strings.Contains(c.Message, ownerID) || !strings.Contains(c.Message, "since") {
		t.Fatalf("lost host's server: power %q, condition %+v", srv.Status.PowerState, c)
	}
	eventually(t, 5*time.Second, func() (bool, string) { return hasEvent(h.events("s1"), "HostLost"), "no HostLost Event on the Server" })
	eventually(t, 5*time.Second, func() (bool, string) {
		op := h.op("op2")
		return hostReachable(op.Status.Conditions) == "False/HostLost" && strings.Contains(op.Status.Message, ownerID),
			fmt.Sprintf("op2 message %q conditions %+v", op.Status.Message, op.Status.Conditions)
	})
	consistently(t, time.Second, func() (bool, string) {
		op, s := h.op("op2"), h.server("s1")
		return op.Status.Phase == "" && s.Status.Host == ownerID && other.dc.Repaves(h.ns, "s1") == 0,
			fmt.Sprintf("op2 phase %q, server host %q, repaves on the other host %d", op.Status.Phase, s.Status.Host, other.dc.Repaves(h.ns, "s1"))
	})

	// The owner comes back (same id, its datacenter kept its machine): it renews, the observer says
	// so, and it runs the Operation that waited for it.
	owner.start(t)
	h.waitServer("s1", testGrace+5*time.Second, func(st stargatev1.ServerStatus) bool {
		return hostReachable(st.Conditions) == "True/HostRenewed" && st.PowerState == stargatev1.PowerOn
	})
	h.waitPhase("op2", stargatev1.OperationSucceeded, 20*time.Second)
	eventually(t, 5*time.Second, func() (bool, string) {
		op := h.op("op2")
		return hostReachable(op.Status.Conditions) == "True/HostRenewed", fmt.Sprintf("op2 conditions %+v", op.Status.Conditions)
	})
	if n := other.dc.Repaves(h.ns, "s1"); n != 0 {
		t.Errorf("the other host repaved the lost host's Server %d times", n)
	}
}

// twoHostsOneServer starts host-a and host-b with one selector, and a Server s1 both match,
// repaved once by one of them: it returns the harness, the owner and the other host.
func twoHostsOneServer(t *testing.T) (h *harness, owner, other *liveHost) {
	t.Helper()
	h = newHarness(t, time.Millisecond, controller.Options{})
	h.stop()
	hosts := map[string]*liveHost{}
	for _, id := range []string{"host-a", "host-b"} {
		hosts[id] = startLiveHost(t, h, id, "dc=x", nil)
	}
	s := server("s1")
	s.Labels = map[string]string{"dc": "x"}
	h.create(s)
	h.create(profile("p", okUserData))
	h.create(repave("op1", "s1", "p"))
	h.waitPhase("op1", stargatev1.OperationSucceeded, 20*time.Second)
	ownerID := h.server("s1").Status.Host
	for id, lh := range hosts {
		if id == ownerID {
			owner = lh
		} else {
			other = lh
		}
	}
	if owner == nil || owner.dc.Repaves(h.ns, "s1")+other.dc.Repaves(h.ns, "s1") != 1 {
		t.Fatalf("owner %q; want one repave in total", ownerID)
	}
	return h, owner, other
}
