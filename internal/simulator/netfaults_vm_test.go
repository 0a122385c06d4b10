package simulator_test

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
)

// networkFaultsRepave runs the rig's first repave with network faults striking a real guest at
// its tap and in its QEMU (TestMachineFaultsWithQEMU runs it, sharing its boots). With a delay, a
// partition, no DNS and no route to the API server injected as the VM starts, the guest's round
// trips take the delay, the partition is in force and then lifted on time, its DNS queries are
// dropped, and its connection to the API server fails with "No route to host": the guest's
// cloud-init fails on it, and the repave says so with the guest's own error lines
// (CloudInitFailed). The FaultInjection is deleted; the returned check, run after the rig's next
// repave succeeded, shows that repave's guest reached the API server with no fault left at its tap.
func networkFaultsRepave(t *testing.T, r *faultRig) (checkGone func()) {
	// (Nobody answers DNS on the host: the guest's queries only have to be sent, or dropped.)
	// The API server as guests reach it: a relay on the bridge's address to the test's API server
	// (on loopback), as a cluster's API server on another machine would be.
	var apiPort string
	gateway := netip.MustParseAddr("192.168.100.1")
	_, apiPort, _ = net.SplitHostPort(relayTo(t, "0.0.0.0:0", strings.TrimPrefix(r.h.env.Config.Host, "https://")))
	r.h.halt()
	r.h.cfg.APIServer = "https://" + net.JoinHostPort(gateway.String(), apiPort)
	r.h.start()

	const delay, partition = 400 * time.Millisecond, 20 * time.Second
	// The guest image has curl, not ping: a TCP connect to a web server of the host's takes a round trip.
	web, err := net.Listen("tcp", "0.0.0.0:0")
	r.must(err)
	t.Cleanup(func() { web.Close() })
	go func() { _ = http.Serve(web, http.NotFoundHandler()) }()
	_, webPort, _ := net.SplitHostPort(web.Addr().String())
	r.setProfile(func(pp *stargatev1.ProvisioningProfileSpec) {
		pp.CloudInit = "#cloud-config\nruncmd:\n  - [sh, -c, 'for i in 1 2 3; do curl -s -o /dev/null -w \"STARGATE-CONNECT %{time_connect}\\n\" " +
			"http://192.168.100.1:" + webPort + "/; done > /dev/ttyS0 2>&1; " +
			"echo nameserver 192.168.100.1 > /etc/resolv.conf; timeout 12 getent hosts registry.stargate.test > /dev/ttyS0 2>&1; " +
			"timeout 20 bash -c \"</dev/tcp/192.168.100.1/" + apiPort + "\" 2> /dev/ttyS0 && echo STARGATE-API-REACHED > /dev/ttyS0']\n"
	})
	fi := r.inject("flaky-net",
		stargatev1.Fault{Name: "slow", Type: stargatev1.FaultNetworkLatency, At: stargatev1.ConditionVMRunning, Duration: &metav1.Duration{Duration: delay}},
		stargatev1.Fault{Name: "cut", Type: stargatev1.FaultNetworkPartition, At: stargatev1.ConditionVMRunning, Duration: &metav1.Duration{Duration: partition}},
		stargatev1.Fault{Name: "dns", Type: stargatev1.FaultNoDNS, At: stargatev1.ConditionVMRunning},
		stargatev1.Fault{Name: "api", Type: stargatev1.FaultNoRouteToAPIServer, At: stargatev1.ConditionVMRunning})
	tap := hostnet.TapName(ns + "/" + r.server)

	var sawPartition bool
	op := r.repave("cut-off", 12*time.Minute, stargatev1.OperationFailed, func() {
		if !sawPartition {
			sawPartition = strings.Contains(nftTable(t, tap), `"NetworkPartition"`)
		}
	})
	if !sawPartition {
		t.Error("the partition was never seen at the VM's tap")
	}
	c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionGuestReady)
	if c == nil || c.Reason != "CloudInitFailed" || !strings.Contains(c.Message, "No route to host") {
		t.Errorf("GuestReady %+v, want CloudInitFailed quoting the guest's No route to host", c)
	}
	if len(op.Status.Faults) != 4 {
		t.Errorf("faults recorded on the Operation: %+v", op.Status.Faults)
	}
	table := nftTable(t, tap)
	if strings.Contains(table, `"NetworkPartition"`) {
		t.Errorf("the partition outlived its %s:\n%s", partition, table)
	}
	if m := regexp.MustCompile(`counter packets (\d+) bytes \d+ drop comment "NoDNS"`).FindStringSubmatch(table); m == nil || m[1] == "0" {
		t.Errorf("the guest's DNS queries were not dropped at its tap:\n%s", table)
	}
	console, err := os.ReadFile(filepath.Join(r.vmDir(), filenames.ConsoleFile))
	r.must(err)
	connects := regexp.MustCompile(`STARGATE-CONNECT ([\d.]+)`).FindAllSubmatch(console, -1)
	if len(connects) != 3 {
		t.Fatalf("the guest printed %d connect times, want 3:\n%s", len(connects), console)
	}
	for _, m := range connects {
		secs, _ := strconv.ParseFloat(string(m[1]), 64)
		t.Logf("a TCP connect (one round trip) with a %s delay: %.0f ms", delay, secs*1000)
		if secs < delay.Seconds()*0.8 {
			t.Errorf("a round trip of %.0f ms, want at least about the injected %s", secs*1000, delay)
		}
	}

	r.must(r.c.Delete(context.Background(), fi))
	return func() {
		t.Helper()
		checkNetworkFaultsGone(t, r, tap)
	}
}

// checkNetworkFaultsGone: after a repave without the network faults, no fault is left at the
// tap, none is recorded, and the guest reached the API server.
func checkNetworkFaultsGone(t *testing.T, r *faultRig, tap string) {
	t.Helper()
	if table := nftTable(t, tap); table != "" {
		t.Errorf("a repave without faults still has a fault table at its tap:\n%s", table)
	}
	console, err := os.ReadFile(filepath.Join(r.vmDir(), filenames.ConsoleFile))
	r.must(err)
	if !strings.Contains(string(console), "STARGATE-API-REACHED") {
		t.Error("without the faults the guest did not reach the API server")
	}
	if _, err := os.Stat(filepath.Join(r.vmDir(), filenames.NetworkFaultsFile)); !os.IsNotExist(err) {
		t.Errorf("network faults still recorded after a clean repave: %v", err)
	}
}

// nftTable is the tap's fault table as nft lists it, or "" when it has none.
func nftTable(t *testing.T, tap string) string {
	out, err := exec.Command("nft", "list", "table", "netdev", "stargate-faults-"+tap).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file") {
			return ""
		}
		t.Fatalf("nft list table: %v: %s", err, out)
	}
	return string(out)
}
