package hostnet

import (
	"fmt"
	"net"
	"strings"
	"testing"
)

func TestTapNameAndMAC(t *testing.T) {
	long := strings.Repeat("n", 63) + "/" + strings.Repeat("s", 63)
	for _, id := range []string{"a/b", long} {
		name := TapName(id)
		if len(name) != 15 || !strings.HasPrefix(name, "sg-") {
			t.Errorf("TapName(%q) = %q, want 15 bytes starting sg-", id, name)
		}
		if strings.ContainsAny(name, "/.") {
			t.Errorf("TapName(%q) = %q contains characters from the identity", id, name)
		}
	}
	if TapName("a/bc") == TapName("ab/c") {
		t.Error("different identities share a tap name")
	}
	// Pinned values: a change of derivation would move every Server's tap and MAC on upgrade.
	for id, want := range map[string][2]string{
		"ns/s":                  {"sg-9b5dfa83fcb4", "26:40:a0:04:bb:9f"},
		"dc-simulator/worker-1": {"sg-81273a987b48", "06:bb:e7:11:45:8e"},
	} {
		if tap, mac := TapName(id), MACAddress(id); tap != want[0] || mac != want[1] {
			t.Errorf("%s: tap %s mac %s, want %s %s", id, tap, mac, want[0], want[1])
		}
	}
}

func TestDerivedMACsAreUnicastLocalAndDistinct(t *testing.T) {
	seen := map[string]string{}
	for i := range 1000 {
		id := fmt.Sprintf("team-%d/worker-%d", i%7, i)
		mac := MACAddress(id)
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			t.Fatalf("MACAddress(%q) = %q: %v", id, mac, err)
		}
		if hw[0]&0x01 != 0 || hw[0]&0x02 == 0 {
			t.Errorf("MACAddress(%q) = %q is not a locally administered unicast address", id, mac)
		}
		if other, ok := seen[mac]; ok {
			t.Errorf("%s and %s share MAC %s", id, other, mac)
		}
		seen[mac] = id
	}
}
