package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func testPool(dir string) *Pool {
	return &Pool{Dir: dir, First: netip.MustParseAddr("192.168.100.11"), Last: netip.MustParseAddr("192.168.100.254")}
}

func TestIPAMAllocatesFromStartAndKeepsAddresses(t *testing.T) {
	p := testPool(t.TempDir())
	a, err := p.Allocate("ns/a")
	if err != nil {
		t.Fatal(err)
	}
	if a.String() != "192.168.100.11" {
		t.Errorf("first address %s, want 192.168.100.11", a)
	}
	b, _ := p.Allocate("ns/b")
	if b.String() != "192.168.100.12" {
		t.Errorf("second address %s, want 192.168.100.12", b)
	}
	again, _ := p.Allocate("ns/a")
	if again != a {
		t.Errorf("re-allocating ns/a gave %s, want its address %s", again, a)
	}
	// A restart is a new Pool on the same directory.
	restarted := testPool(p.Dir)
	if got, ok, err := restarted.Lookup("ns/b"); err != nil || !ok || got != b {
		t.Errorf("after restart ns/b = %s %v %v, want %s", got, ok, err, b)
	}
	if err := restarted.Release("ns/a"); err != nil {
		t.Fatal(err)
	}
	if err := restarted.Release("ns/a"); err != nil {
		t.Errorf("second release: %v", err)
	}
	c, _ := restarted.Allocate("ns/c")
	if c != a {
		t.Errorf("after releasing %s, ns/c got %s, want the freed address", a, c)
	}
}

func TestIPAMConcurrentAllocationsAreUnique(t *testing.T) {
	dir := t.TempDir()
	const owners = 60
	var wg sync.WaitGroup
	got := make([]netip.Addr, owners)
	errs := make([]error, owners)
	for i := range owners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Separate Pool values: as separate processes would be, they share only the directory.
			got[i], errs[i] = testPool(dir).Allocate(fmt.Sprintf("ns/server-%d", i))
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, a := range got {
		if errs[i] != nil {
			t.Fatalf("owner %d: %v", i, errs[i])
		}
		if j, dup := seen[a]; dup {
			t.Fatalf("address %s given to owners %d and %d", a, j, i)
		}
		seen[a] = i
	}
	all, err := testPool(dir).Allocations()
	if err != nil || len(all) != owners {
		t.Fatalf("allocations: %d, %v; want %d", len(all), err, owners)
	}
}

func TestIPAMExhaustion(t *testing.T) {
	p := &Pool{Dir: t.TempDir(), First: netip.MustParseAddr("10.0.0.2"), Last: netip.MustParseAddr("10.0.0.3")}
	for _, o := range []string{"a", "b"} {
		if _, err := p.Allocate(o); err != nil {
			t.Fatal(err)
		}
	}
	_, err := p.Allocate("c")
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("third allocation: %v, want ErrPoolExhausted", err)
	}
	t.Log(err)
}

func TestIPAMIgnoresCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	// A crash between creating the temporary claim and linking it leaves only a temporary file.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".claim-123"), []byte("ns/ghost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := testPool(dir).Allocate("ns/real")
	if err != nil || a.String() != "192.168.100.11" {
		t.Fatalf("allocate after crash leftovers: %s %v", a, err)
	}
}
