package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"stargate.io/stargate/internal/hostlease"
	"stargate.io/stargate/internal/testenv"
)

// A second simulator with the same --host-id refuses to start while the first renews the host's
// Lease, naming the holder; a clean stop releases it (hostlease_test.go: a restart then takes it
// at once). One Run per process after that: the controller's metrics register globally.
func TestSameHostIDRefusedWhileTheFirstRuns(t *testing.T) {
	env := testenv.StartFor(t)
	if err := env.Client.Create(context.Background(), testenv.Namespace(hostlease.DefaultNamespace)); err != nil {
		t.Fatal(err)
	}
	opts := func(pid int) Options {
		o := defaults(t)
		o.Provider, o.HostID = "mock", "dup"
		o.LeaseRenewInterval, o.HostGracePeriod = 200*time.Millisecond, 3*time.Second
		o.incarnation = hostlease.Incarnation{BootID: "b", PIDNS: "1", PID: pid}
		o.incarnation.PIDNS = hostlease.Self().PIDNS
		return o
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- Run(ctx, env.Config, opts(os.Getpid())) }()
	key := client.ObjectKey{Namespace: hostlease.DefaultNamespace, Name: hostlease.LeaseName("dup")}
	deadline := time.Now().Add(10 * time.Second)
	for lease := (&coordinationv1.Lease{}); ; time.Sleep(50 * time.Millisecond) {
		if env.Client.Get(context.Background(), key, lease) == nil && strings.HasSuffix(ptr.Deref(lease.Spec.HolderIdentity, ""), fmt.Sprintf("/%d", os.Getpid())) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first simulator never held its Lease")
		}
	}

	start := time.Now()
	err := Run(context.Background(), env.Config, opts(200))
	holder := fmt.Sprintf("dup/b/%s/%d", hostlease.Self().PIDNS, os.Getpid())
	if !errors.Is(err, hostlease.ErrHeldByAnother) || !strings.Contains(err.Error(), holder) || !strings.Contains(err.Error(), "--host-id") {
		t.Fatalf("duplicate start: %v; want a refusal naming the holder and the fix", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("refusal took %s", took)
	}

	cancel()
	if err := <-first; err != nil {
		t.Fatalf("first simulator: %v", err)
	}
	lease := &coordinationv1.Lease{}
	if err := env.Client.Get(context.Background(), key, lease); err != nil || ptr.Deref(lease.Spec.HolderIdentity, "") != "" {
		t.Fatalf("a cleanly stopped simulator left its Lease held (%v): %v", lease.Spec.HolderIdentity, err)
	}
}
