package redfishdc

import (
	"strings"
	"testing"

	"stargate.io/stargate/pkg/imagecache"
)

// The URLs the provider hands out are built on PublicURL: one the BMC and the server can use as it
// is, with nothing a picky BMC refuses.
func TestPublicURLIsCheckedAtStart(t *testing.T) {
	for _, u := range []string{"", "https://10.0.0.1:8082", "http://user:pw@10.0.0.1", "http://10.0.0.1/prefix", "http://10.0.0.1/?a=b", "ftp://x"} {
		_, err := New(Config{PublicURL: u, Reader: nil, Images: &imagecache.Cache{Dir: t.TempDir()}, RawDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "public URL") {
			t.Errorf("public URL %q: error %v, want it refused", u, err)
		}
	}
}

func TestIDsAndTokensAreRandomAndURLSafe(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id, tok := randomID(), randomToken()
		if len(id) != 52 || strings.Trim(id, "abcdefghijklmnopqrstuvwxyz234567") != "" {
			t.Fatalf("id %q: want 52 base32 characters", id)
		}
		if len(tok) < 43 || strings.ContainsAny(tok, "?&:/+= ") {
			t.Fatalf("token %q", tok)
		}
		if seen[id] || seen[tok] {
			t.Fatal("a repeated id or token")
		}
		seen[id], seen[tok] = true, true
	}
}
