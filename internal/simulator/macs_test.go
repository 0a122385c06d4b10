package simulator

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/hostnet"
)

func TestClaimMACRefusesASecondOwner(t *testing.T) {
	l := Layout{WorkDir: t.TempDir()}
	a := l.VMDir(types.NamespacedName{Namespace: "team-a", Name: "worker-1"})
	b := l.VMDir(types.NamespacedName{Namespace: "team-b", Name: "worker-1"})
	if owner, err := claimMAC(l, a, "52:54:00:12:34:56"); err != nil || owner != "" {
		t.Fatalf("first claim: owner %q err %v", owner, err)
	}
	if owner, err := claimMAC(l, a, "52:54:00:12:34:56"); err != nil || owner != "" {
		t.Fatalf("the owner claiming again (a repave): owner %q err %v", owner, err)
	}
	if owner, err := claimMAC(l, b, "52:54:00:12:34:56"); err != nil || owner != "Server team-a/worker-1" {
		t.Fatalf("second Server with the same MAC: owner %q err %v, want Server team-a/worker-1", owner, err)
	}
	if got := recordedMAC(b); got != "" {
		t.Errorf("the refused Server recorded MAC %q", got)
	}
	if owner, err := claimMAC(l, b, "52:54:00:12:34:57"); err != nil || owner != "" || recordedMAC(b) != "52:54:00:12:34:57" {
		t.Fatalf("another MAC: owner %q err %v recorded %q", owner, err, recordedMAC(b))
	}
}

// A bake VM is on the bridge like a Server's VM: its MAC is claimed in the same registry, both ways.
func TestBakeMACsAreClaimed(t *testing.T) {
	const key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	// Without the refusal, the repave below would go on to its image step: give it one.
	p := imgTestProvider(t, ImagePolicy{})
	p.layout, p.locks = Layout{WorkDir: t.TempDir()}, map[types.NamespacedName]*sync.Mutex{}
	bakeDir := filepath.Join(p.layout.BakesDir(), key)
	bakeMAC := hostnet.MACAddress(bakeOwnerPrefix + short(key))
	if err := p.claimBakeMAC(bakeDir, bakeMAC); err != nil {
		t.Fatalf("bake claiming a free MAC: %v", err)
	}
	if got := recordedMAC(bakeDir); got != bakeMAC {
		t.Fatalf("bake recorded MAC %q, want %s", got, bakeMAC)
	}

	// A tenant's Server asking for the running bake's MAC is refused, naming the bake.
	server := types.NamespacedName{Namespace: "team-b", Name: "worker-1"}
	st, err := p.Repave(context.Background(), controller.RepaveRequest{Server: server, MAC: bakeMAC, InstanceID: "i-1"})
	if err != nil {
		t.Fatal(err)
	}
	want := "the bake VM of golden image " + short(key)
	if !st.Failed || st.Reason != "DuplicateMAC" || !strings.Contains(st.Message, want) {
		t.Fatalf("repave with the bake's MAC: failed %v reason %q message %q, want DuplicateMAC naming %q", st.Failed, st.Reason, st.Message, want)
	}
	if step := (&status{st}).step(stargatev1.ConditionNetworkReady); step.State != controller.StepFailed {
		t.Errorf("NetworkReady is %v, want failed", step.State)
	}
	if got := recordedMAC(p.VMDir(server)); got != "" {
		t.Errorf("the refused Server recorded MAC %q", got)
	}

	// A bake whose MAC a Server's VM holds fails, naming the Server, and claims nothing.
	other := strings.Replace(key, "0", "f", 1)
	otherDir := filepath.Join(p.layout.BakesDir(), other)
	otherMAC := hostnet.MACAddress(bakeOwnerPrefix + short(other))
	if owner, err := claimMAC(p.layout, p.VMDir(server), otherMAC); err != nil || owner != "" {
		t.Fatalf("Server claiming a free MAC: owner %q err %v", owner, err)
	}
	err = p.claimBakeMAC(otherDir, otherMAC)
	if err == nil || !strings.Contains(err.Error(), "Server team-b/worker-1") || !strings.Contains(err.Error(), otherMAC) {
		t.Fatalf("bake with a Server's MAC: %v, want an error naming the Server and the MAC", err)
	}
	if got := recordedMAC(otherDir); got != "" {
		t.Errorf("the refused bake recorded MAC %q", got)
	}
}
