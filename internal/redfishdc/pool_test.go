package redfishdc_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/redfishdc"
)

// Servers whose spec.network names no address get one of the pool's: the lowest free one (never
// one another Server names or shows), with the pool's gateway and DNS, in the installer's spec and
// in status.ipAddress; a repave keeps it; a full pool refuses the repave before the BMC is touched.
func TestAddressesFromThePool(t *testing.T) {
	pool := &redfishdc.AddressPool{Subnet: netip.MustParsePrefix("10.0.1.0/24"), First: netip.MustParseAddr("10.0.1.10"),
		Last: netip.MustParseAddr("10.0.1.12"), Gateway: netip.MustParseAddr("10.0.1.1"), DNS: []netip.Addr{netip.MustParseAddr("10.0.1.2")}}
	d := newDC(t, dcOptions{pool: pool})
	d.basics()
	fromPool := func(name, system string) *stargatev1.Server {
		s := d.server(name, system, d.bmc.URL)
		s.Spec.Network = &stargatev1.StaticNetwork{MACAddress: "52:54:00:00:00:0a"}
		return s
	}
	for _, sys := range []string{"node-1", "node-2", "node-3", "node-4"} {
		d.addSystem(sys)
	}
	// node-3's Server names 10.0.1.11 itself: the pool must skip it.
	static := d.server("static", "node-3", d.bmc.URL)
	static.Spec.Network.Address = "10.0.1.11/24"
	d.create(static, fromPool("a", "node-1"), repave("ra", "a", 0))

	installed := func(op, system, want string) {
		t.Helper()
		d.waitForCondition(op, stargatev1.ConditionMediaInserted)
		n := d.bootFromCD(system).spec.Network
		if n.Address != want+"/24" || n.Gateway != "10.0.1.1" || len(n.DNS) != 1 || n.DNS[0] != "10.0.1.2" {
			t.Errorf("%s: the installer's network %+v, want %s/24 with the pool's gateway and DNS", op, n, want)
		}
	}
	serverIP := func(name, want string) {
		t.Helper()
		d.waitForServer(name, "status.ipAddress "+want, func(s *stargatev1.Server) bool { return s.Status.IPAddress == want })
	}
	installed("ra", "node-1", "10.0.1.10")
	serverIP("a", "10.0.1.10")

	d.create(fromPool("b", "node-2"), repave("rb", "b", 0))
	installed("rb", "node-2", "10.0.1.12")

	// The pool is full: the repave fails at once and the machine is left alone.
	calls := len(d.backend.Calls())
	d.create(fromPool("c", "node-4"), repave("rc", "c", 0))
	op := d.waitForPhase("rc", stargatev1.OperationFailed)
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "AddressPoolExhausted" ||
		!strings.Contains(op.Status.Message, "10.0.1.10-10.0.1.12") {
		t.Errorf("a repave beyond the pool: %+v, want AddressPoolExhausted naming the range", c)
	}
	for _, c := range d.backend.Calls()[calls:] {
		if strings.Contains(c.Arg, "node-4") || c.System == "node-4" {
			t.Errorf("the refused repave touched its machine: %+v", c)
		}
	}

	// A new repave of a (its first one deleted) keeps its address.
	if err := env.Client.Delete(context.Background(), &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Namespace: d.ns, Name: "ra"}}); err != nil {
		t.Fatal(err)
	}
	d.create(repave("ra2", "a", 0))
	installed("ra2", "node-1", "10.0.1.10")

	// Deleting b frees its address for c.
	ctx := context.Background()
	b := &stargatev1.Server{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: d.ns, Name: "b"}, b); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(b), b)
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("Server b was not deleted: %v", err)
	}
	d.create(repave("rc2", "c", 0))
	installed("rc2", "node-4", "10.0.1.12")
}

// Without a pool, a Server must name its address: the repave says so and leaves the machine alone.
func TestNoAddressWithoutAPool(t *testing.T) {
	d := newDC(t, dcOptions{})
	d.basics()
	d.addSystem("node-1")
	s := d.server("a", "node-1", d.bmc.URL)
	s.Spec.Network.Address = ""
	d.create(s, repave("ra", "a", 0))
	op := d.waitForPhase("ra", stargatev1.OperationFailed)
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "NoAddress" ||
		!strings.Contains(op.Status.Message, "--address-pool") {
		t.Errorf("no address, no pool: %+v, want NoAddress naming --address-pool", c)
	}
	if calls := d.backend.Calls(); len(calls) != 0 {
		t.Errorf("the refused repave touched the machine: %+v", calls)
	}
}
