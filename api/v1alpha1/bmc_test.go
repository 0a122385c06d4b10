package v1alpha1_test

import (
	"context"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// redfishServer is a Server of a Redfish datacenter as an operator writes one.
func redfishServer(name string) *stargatev1.Server {
	s := validServer(name)
	s.Spec.BMC = &stargatev1.BMCSpec{CredentialsSecretRef: stargatev1.LocalSecretReference{Name: "bmc"},
		Address: "https://10.0.0.50", CASecretRef: &stargatev1.LocalSecretReference{Name: "bmc-ca"}, SystemID: "1"}
	s.Spec.RootDeviceHint = &stargatev1.RootDeviceHint{Serial: "S3Z9NX0K123456", MinSize: ptr.To(resource.MustParse("100Gi"))}
	s.Spec.Network = &stargatev1.StaticNetwork{MACAddress: "52:54:00:12:34:56", Address: "10.0.1.11/24", Gateway: "10.0.1.1", DNS: []string{"10.0.1.2"}}
	return s
}

func TestRedfishServersAreAccepted(t *testing.T) {
	ns := newNamespace(t)
	for i, mutate := range []func(*stargatev1.Server){
		func(*stargatev1.Server) {},
		func(s *stargatev1.Server) { s.Spec.BMC.CASecretRef, s.Spec.BMC.InsecureSkipVerify = nil, true },
		func(s *stargatev1.Server) {
			s.Spec.BMC.Address, s.Spec.BMC.CASecretRef = "http://bmc.example:8000/redfish/v1", nil
		},
		// The simulator's meaning: a BMC served for the Server, nothing else set.
		func(s *stargatev1.Server) {
			s.Spec.BMC = &stargatev1.BMCSpec{CredentialsSecretRef: s.Spec.BMC.CredentialsSecretRef}
			s.Spec.Network, s.Spec.RootDeviceHint = nil, nil
		},
		func(s *stargatev1.Server) { s.Spec.Network.Gateway, s.Spec.Network.DNS = "", nil },
		func(s *stargatev1.Server) {
			s.Spec.Network = &stargatev1.StaticNetwork{MACAddress: "52:54:00:12:34:56", Address: "fd00::11/64", Gateway: "fd00::1"}
		},
	} {
		s := redfishServer("ok-" + string(rune('a'+i)))
		s.Namespace = ns
		mutate(s)
		if err := env.Client.Create(context.Background(), s); err != nil {
			t.Errorf("case %d: %v", i, err)
		}
	}
}

// TestHostileRedfishServersAreRejected: spec.bmc and spec.network are tenant input to a controller
// that holds BMC credentials; what the API can refuse, it refuses with a message that says why.
func TestHostileRedfishServersAreRejected(t *testing.T) {
	ns := newNamespace(t)
	cases := []struct {
		name    string
		mutate  func(*stargatev1.Server)
		wantMsg string
	}{
		{"credentials in the address", func(s *stargatev1.Server) { s.Spec.BMC.Address = "https://root:calvin@10.0.0.50" }, "without credentials"},
		{"a path elsewhere", func(s *stargatev1.Server) { s.Spec.BMC.Address = "https://10.0.0.50/api/v1/namespaces" }, "no path other than /redfish/v1"},
		{"a query", func(s *stargatev1.Server) { s.Spec.BMC.Address = "https://10.0.0.50/?x=1" }, "without credentials, query or fragment"},
		{"another scheme", func(s *stargatev1.Server) { s.Spec.BMC.Address = "file:///etc/shadow" }, "must be an http(s) URL"},
		{"no host", func(s *stargatev1.Server) { s.Spec.BMC.Address = "https://:443" }, "must be an http(s) URL"},
		{"https with no trust", func(s *stargatev1.Server) { s.Spec.BMC.CASecretRef = nil }, "spec.bmc.caSecretRef"},
		{"driving options without an address", func(s *stargatev1.Server) { s.Spec.BMC.Address, s.Spec.BMC.CASecretRef = "", nil },
			"set spec.bmc.address too"},
		{"a system id with a slash", func(s *stargatev1.Server) { s.Spec.BMC.SystemID = "../Managers/1" }, "spec.bmc.systemID"},
		{"a serial of control characters", func(s *stargatev1.Server) { s.Spec.RootDeviceHint.Serial = "a\nb" }, "spec.rootDeviceHint.serial"},
		{"a blank serial", func(s *stargatev1.Server) { s.Spec.RootDeviceHint.Serial = "   " }, "spec.rootDeviceHint.serial"},
		{"a negative minimum size", func(s *stargatev1.Server) { s.Spec.RootDeviceHint.MinSize = ptr.To(resource.MustParse("-1Gi")) },
			"minSize must be a positive size"},
		{"an address without prefix", func(s *stargatev1.Server) { s.Spec.Network.Address = "10.0.1.11" }, "must be a unicast address with a prefix length"},
		{"a multicast address", func(s *stargatev1.Server) { s.Spec.Network.Address = "224.0.0.1/4" }, "must be a unicast address"},
		{"a gateway that is a name", func(s *stargatev1.Server) { s.Spec.Network.Gateway = "router.example" }, "gateway must be an IP address"},
		{"a DNS server that is a name", func(s *stargatev1.Server) { s.Spec.Network.DNS = []string{"evil.example"} }, "dns entries must be IP addresses"},
		{"four DNS servers", func(s *stargatev1.Server) {
			s.Spec.Network.DNS = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}
		}, "spec.network.dns"},
		{"a MAC in upper case", func(s *stargatev1.Server) { s.Spec.Network.MACAddress = "52:54:00:AA:34:56" }, "spec.network.macAddress"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := redfishServer("bad-" + string(rune('a'+i)))
			s.Namespace = ns
			tc.mutate(s)
			err := env.Client.Create(context.Background(), s)
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tc.wantMsg)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestBMCTLSSaysHowTheBMCIsTrusted(t *testing.T) {
	for _, tc := range []struct {
		spec stargatev1.BMCSpec
		want stargatev1.BMCTLS
	}{
		{stargatev1.BMCSpec{Address: "https://10.0.0.50", CASecretRef: &stargatev1.LocalSecretReference{Name: "ca"}}, stargatev1.BMCTLSVerified},
		{stargatev1.BMCSpec{Address: "https://10.0.0.50", InsecureSkipVerify: true}, stargatev1.BMCTLSNotVerified},
		{stargatev1.BMCSpec{Address: "http://10.0.0.50"}, stargatev1.BMCTLSPlainHTTP},
	} {
		if got := tc.spec.TLS(); got != tc.want {
			t.Errorf("%+v: TLS() = %s, want %s", tc.spec, got, tc.want)
		}
	}
}
