package simulator

import (
	"path/filepath"
	"testing"
)

func TestClaimMACRefusesASecondOwner(t *testing.T) {
	vms := t.TempDir()
	a, b := filepath.Join(vms, "team-a", "worker-1"), filepath.Join(vms, "team-b", "worker-1")
	if owner, err := claimMAC(vms, a, "52:54:00:12:34:56"); err != nil || owner != "" {
		t.Fatalf("first claim: owner %q err %v", owner, err)
	}
	if owner, err := claimMAC(vms, a, "52:54:00:12:34:56"); err != nil || owner != "" {
		t.Fatalf("the owner claiming again (a repave): owner %q err %v", owner, err)
	}
	if owner, err := claimMAC(vms, b, "52:54:00:12:34:56"); err != nil || owner != "team-a/worker-1" {
		t.Fatalf("second Server with the same MAC: owner %q err %v, want team-a/worker-1", owner, err)
	}
	if got := recordedMAC(b); got != "" {
		t.Errorf("the refused Server recorded MAC %q", got)
	}
	if owner, err := claimMAC(vms, b, "52:54:00:12:34:57"); err != nil || owner != "" || recordedMAC(b) != "52:54:00:12:34:57" {
		t.Fatalf("another MAC: owner %q err %v recorded %q", owner, err, recordedMAC(b))
	}
}
