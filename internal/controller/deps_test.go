package controller_test

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// hostLayer matches the packages only the QEMU simulator needs: the host's network stack, the ISO
// writer and Stargate's host-layer packages.
var hostLayer = regexp.MustCompile(`netlink|iptables|diskfs|^stargate\.io/stargate/pkg/(qemu|hostnet|ipam|imagecache|cloudinit)(/|$)`)

// TestControllerLinksNoHostLayer keeps the controller provider-neutral: a build with only the mock
// datacenter (or a real datacenter's provider) must not link netlink, iptables or the QEMU host
// layer. User-data checks come from pkg/userdata for this reason.
func TestControllerLinksNoHostLayer(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the controller's dependencies: %v", err)
	}
	out, err := exec.Command(goBin, "list", "-deps", "stargate.io/stargate/internal/controller").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	var bad []string
	for _, pkg := range strings.Fields(string(out)) {
		if hostLayer.MatchString(pkg) {
			bad = append(bad, pkg)
		}
	}
	if len(bad) > 0 {
		t.Errorf("internal/controller links host-layer packages %v; import them from a provider, not the controller", bad)
	}
}
