package hostlease

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"stargate.io/stargate/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	e, err := testenv.Start()
	if err != nil {
		panic(err)
	}
	env = e
	code := m.Run()
	_ = e.Stop()
	os.Exit(code)
}

func testConfig(t *testing.T, host string, pid int) Config {
	t.Helper()
	ns := strings.ToLower(strings.ReplaceAll(t.Name(), "_", "-"))
	_ = env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	return Config{Client: env.Client, Namespace: ns, HostID: host, RenewInterval: 100 * time.Millisecond, GracePeriod: time.Second,
		Self: Incarnation{BootID: "boot-1", PIDNS: "4026531836", PID: pid}, Alive: func(int) bool { return true }}
}

func TestLeaseNameIsAValidObjectName(t *testing.T) {
	for _, id := range []string{"lab1", "Host_A.example/β", strings.Repeat("x", 300), "///"} {
		if errs := validation.IsDNS1123Subdomain(LeaseName(id)); len(errs) > 0 {
			t.Errorf("LeaseName(%q) = %q: %v", id, LeaseName(id), errs)
		}
	}
	if LeaseName("a/b") == LeaseName("a-b") {
		t.Error("distinct host ids share a Lease name")
	}
}

func TestHolderRoundTrips(t *testing.T) {
	inc := Incarnation{BootID: "b", PIDNS: "42", PID: 7}
	got, ok := parseHolder(Holder("dc/one", inc))
	if !ok || got != inc {
		t.Fatalf("parseHolder = %+v, %v; want %+v", got, ok, inc)
	}
	if _, ok := parseHolder("garbage"); ok {
		t.Fatal("garbage parsed")
	}
}

func TestDuplicateRefusedWhileRenewed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first, err := Acquire(ctx, testConfig(t, "h1", 100))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- first.Start(ctx) }()

	start := time.Now()
	_, err = Acquire(ctx, testConfig(t, "h1", 200))
	if !errors.Is(err, ErrHeldByAnother) || !strings.Contains(err.Error(), first.Holder()) {
		t.Fatalf("duplicate: err = %v; want ErrHeldByAnother naming %s", err, first.Holder())
	}
	if time.Since(start) > time.Second {
		t.Errorf("refusal took %s, more than the grace period", time.Since(start))
	}
	t.Log(err)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("renewal loop: %v", err)
	}
}

func TestRestartAfterCleanStopTakesOverAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	first, err := Acquire(ctx, testConfig(t, "h1", 100))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- first.Start(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := Acquire(context.Background(), testConfig(t, "h1", 200)); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 300*time.Millisecond {
		t.Errorf("took %s to take a released lease", time.Since(start))
	}
}

func TestCrashedIncarnationOfThisMachineTakenOverAtOnce(t *testing.T) {
	ctx := context.Background()
	if _, err := Acquire(ctx, testConfig(t, "h1", 100)); err != nil { // "crashes": never renews nor releases
		t.Fatal(err)
	}
	cfg := testConfig(t, "h1", 200)
	cfg.Alive = func(pid int) bool { return pid != 100 }
	start := time.Now()
	l, err := Acquire(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 300*time.Millisecond {
		t.Errorf("took %s to take the lease of a dead pid", time.Since(start))
	}
	lease := &coordinationv1.Lease{}
	if err := env.Client.Get(ctx, l.Key(), lease); err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(lease.Spec.HolderIdentity, "") != l.Holder() || ptr.Deref(lease.Spec.LeaseTransitions, 0) != 1 ||
		lease.Annotations[AnnotationHostID] != "h1" || lease.Labels[LabelHostLease] != "true" {
		t.Fatalf("lease after takeover: %+v %+v", lease.ObjectMeta, lease.Spec)
	}
}

func TestSilentLeaseOfAnotherMachineTakenAfterGrace(t *testing.T) {
	ctx := context.Background()
	other := testConfig(t, "h1", 100)
	other.Self.BootID = "boot-of-another-machine"
	if _, err := Acquire(ctx, other); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "h1", 200)
	start := time.Now()
	l, err := Acquire(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < cfg.GracePeriod || took > 3*cfg.GracePeriod {
		t.Errorf("took %s; want about the grace period %s", took, cfg.GracePeriod)
	}
	// The silent incarnation, should it come back, finds it lost and must stop.
	old := &Lease{cfg: other, holder: Holder("h1", other.Self), key: l.Key()}
	if err := old.Renew(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("old incarnation renewing: %v; want ErrLost", err)
	}
	if err := old.Release(ctx); err != nil {
		t.Fatal(err)
	}
	lease := &coordinationv1.Lease{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: cfg.Namespace, Name: LeaseName("h1")}, lease); err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(lease.Spec.HolderIdentity, "") != l.Holder() {
		t.Fatalf("old incarnation's release cleared the new holder: %q", ptr.Deref(lease.Spec.HolderIdentity, ""))
	}
}
