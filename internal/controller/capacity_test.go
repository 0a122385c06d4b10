package controller

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

// A provider's background work holds the same budget as Operations: it takes what is free, an
// Operation then waits and is told why, and nothing is lent before the running Operations were
// counted after a start.
func TestBackgroundWorkSharesTheCapacity(t *testing.T) {
	c := newCapacity(2, 3<<30, nil)
	lent := lentCapacity{c}
	if lent.TryHold("bake:1", 1<<30) {
		t.Fatal("capacity lent before the running Operations were counted")
	}
	if err := c.warmUp(func() (map[types.NamespacedName]int64, error) {
		return map[types.NamespacedName]int64{{Namespace: "ns", Name: "running"}: 1 << 30}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if !lent.TryHold("bake:1", 1<<30) {
		t.Fatal("a bake could not hold free capacity")
	}
	if again := lent.TryHold("bake:1", 1<<30); !again {
		t.Fatal("holding a key twice failed")
	}
	if lent.TryHold("bake:2", 1<<30) {
		t.Error("a second bake held capacity beyond --max-parallel")
	}
	ok, why := c.admit(types.NamespacedName{Namespace: "ns", Name: "op"}, 1<<30)
	if ok || !strings.Contains(why, "2 of 2 parallel repaves running (1 of them the host's own background VMs") {
		t.Errorf("admit with a bake holding the last slot: %v %q", ok, why)
	}
	lent.Release("bake:1")
	lent.Release("bake:1") // idempotent
	if ok, why := c.admit(types.NamespacedName{Namespace: "ns", Name: "op"}, 1<<30); !ok {
		t.Errorf("released bake: the Operation still waits: %s", why)
	}
	// Memory counts too: 2 GiB of 3 GiB held, a 2 GiB bake does not fit.
	c.maxParallel = 0
	if lent.TryHold("bake:3", 2<<30) {
		t.Error("a bake held memory beyond --max-memory")
	}
}
