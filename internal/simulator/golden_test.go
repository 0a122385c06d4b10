package simulator

import "testing"

// A golden image's key changes with everything that changes what the bake makes, and with the
// namespace (no tenant boots another's bake); it never depends on how the parts split.
func TestGoldenKey(t *testing.T) {
	base := goldenKey("sha256:aa", "team-a", []byte("#cloud-config\npackages: [nginx]\n"))
	if len(base) != 64 || goldenKey("sha256:aa", "team-a", []byte("#cloud-config\npackages: [nginx]\n")) != base {
		t.Fatalf("key %q is not a stable sha256", base)
	}
	for name, other := range map[string]string{
		"another OS image":     goldenKey("sha256:bb", "team-a", []byte("#cloud-config\npackages: [nginx]\n")),
		"another namespace":    goldenKey("sha256:aa", "team-b", []byte("#cloud-config\npackages: [nginx]\n")),
		"another installation": goldenKey("sha256:aa", "team-a", []byte("#cloud-config\npackages: [curl]\n")),
		// Length prefixes: moving bytes from one part to the next is another key.
		"parts shifted": goldenKey("sha256:aat", "eam-a", []byte("#cloud-config\npackages: [nginx]\n")),
	} {
		if other == base {
			t.Errorf("%s: same key %s", name, base)
		}
	}
}
