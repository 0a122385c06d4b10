package hostnet

import (
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
		if TapName(id) != name || MACAddress(id) != MACAddress(id) {
			t.Error("names are not stable")
		}
	}
	if TapName("a/bc") == TapName("ab/c") {
		t.Error("different identities share a tap name")
	}
	if mac := MACAddress("ns/s"); !strings.HasPrefix(mac, "52:54:00:") || len(mac) != 17 {
		t.Errorf("MACAddress = %q", mac)
	}
}
