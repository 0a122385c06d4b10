package installspec

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"stargate.io/stargate/pkg/cloudinit"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

func validSpec() Spec {
	return Spec{
		APIVersion: APIVersion,
		Image: Image{
			URL:           "http://10.0.0.1:8080/images/0123456789abcdef.raw",
			ChunkedSHA256: strings.Repeat("ab", 32),
			SizeBytes:     3 << 30,
		},
		Network: Network{
			MAC: "52:54:00:12:34:56", Address: "10.0.0.11/24", Gateway: "10.0.0.1", DNS: []string{"10.0.0.1"},
		},
		RootDevice: RootDeviceHint{Serial: "S1234"},
		Seed:       Seed{MetaData: []byte("instance-id: i-1\n"), UserData: []byte("#cloud-config\n")},
		Callback:   Callback{URL: "http://10.0.0.1:8080/installer/report", Token: strings.Repeat("t", 43)},
	}
}

func TestDecodeRoundTrip(t *testing.T) {
	s := validSpec()
	b, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if got.Image != s.Image || got.Callback != s.Callback || string(got.Seed.MetaData) != string(s.Seed.MetaData) ||
		got.Network.Address != s.Network.Address || got.RootDevice != s.RootDevice {
		t.Errorf("round trip changed the spec: %+v", got)
	}
	files := got.Seed.Files()
	if len(files) != 2 || string(files["user-data"]) != "#cloud-config\n" {
		t.Errorf("Files() = %v, want meta-data and user-data only", files)
	}
}

func TestValidateRefusesHostileValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Spec)
		want   string
	}{
		{"wrong version", func(s *Spec) { s.APIVersion = "v0" }, "apiVersion"},
		{"file URL", func(s *Spec) { s.Image.URL = "file:///etc/shadow" }, "http or https"},
		{"URL with credentials", func(s *Spec) { s.Image.URL = "http://u:p@10.0.0.1/x.raw" }, "credentials"},
		{"URL with newline", func(s *Spec) { s.Image.URL = "http://10.0.0.1/x\r\nHost: evil" }, "control character"},
		{"URL without host", func(s *Spec) { s.Image.URL = "http:///x.raw" }, "no host"},
		{"huge URL", func(s *Spec) { s.Image.URL = "http://10.0.0.1/" + strings.Repeat("a", MaxURLBytes) }, "longer than"},
		{"https without CA", func(s *Spec) { s.Image.URL = "https://10.0.0.1/x.raw" }, "caBundle"},
		{"CA without certificate", func(s *Spec) { s.CABundle = "hello" }, "no PEM"},
		{"uppercase digest", func(s *Spec) { s.Image.ChunkedSHA256 = strings.Repeat("AB", 32) }, "chunkedSHA256"},
		{"short digest", func(s *Spec) { s.Image.ChunkedSHA256 = "abc" }, "chunkedSHA256"},
		{"negative size", func(s *Spec) { s.Image.SizeBytes = -1 }, "sizeBytes"},
		{"absurd size", func(s *Spec) { s.Image.SizeBytes = MaxImageBytes + 1 }, "sizeBytes"},
		{"bad MAC", func(s *Spec) { s.Network.MAC = "52:54:00" }, "network.mac"},
		{"EUI-64 MAC", func(s *Spec) { s.Network.MAC = "00:00:00:00:fe:80:00:00" }, "network.mac"},
		{"address without prefix", func(s *Spec) { s.Network.Address = "10.0.0.11" }, "prefix length"},
		{"multicast address", func(s *Spec) { s.Network.Address = "224.0.0.1/24" }, "unicast"},
		{"zero prefix", func(s *Spec) { s.Network.Address = "10.0.0.11/0"; s.Network.Gateway = "" }, "zero-length"},
		{"gateway off subnet", func(s *Spec) { s.Network.Gateway = "10.9.0.1" }, "subnet"},
		{"gateway is the address", func(s *Spec) { s.Network.Gateway = "10.0.0.11" }, "subnet"},
		{"gateway of other family", func(s *Spec) { s.Network.Gateway = "fe80::1" }, "families"},
		{"too many DNS", func(s *Spec) { s.Network.DNS = []string{"1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"} }, "at most"},
		{"DNS name", func(s *Spec) { s.Network.DNS = []string{"dns.example"} }, "not an IP"},
		{"serial with newline", func(s *Spec) { s.RootDevice.Serial = "S1\n" }, "printable"},
		{"blank serial", func(s *Spec) { s.RootDevice.Serial = "   " }, "blank"},
		{"long WWN", func(s *Spec) { s.RootDevice.WWN = strings.Repeat("5", MaxHintBytes+1) }, "longer than"},
		{"negative min size", func(s *Spec) { s.RootDevice.MinSizeBytes = -5 }, "minSizeBytes"},
		{"no meta-data", func(s *Spec) { s.Seed.MetaData = nil }, "metaData"},
		{"huge seed", func(s *Spec) { s.Seed.UserData = make([]byte, MaxSeedBytes) }, "more than"},
		{"short token", func(s *Spec) { s.Callback.Token = "abc" }, "token"},
		{"token with header injection", func(s *Spec) { s.Callback.Token = strings.Repeat("a", 40) + "\r\nX: y" }, "token"},
		{"callback to a unix socket", func(s *Spec) { s.Callback.URL = "unix:///run/x.sock" }, "callback.url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validSpec()
			tc.mutate(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestValidateAcceptsHTTPSWithCA(t *testing.T) {
	s := validSpec()
	s.CABundle = testCA
	s.Image.URL = "https://images.example:8443/a.raw"
	s.Network.Address = "2001:db8::11/64"
	s.Network.Gateway = "2001:db8::1"
	s.Network.DNS = []string{"2001:db8::53"}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeRefusesMalformedDocuments(t *testing.T) {
	good, err := json.Marshal(validSpec())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"unknown field", strings.Replace(string(good), `"apiVersion"`, `"surprise":1,"apiVersion"`, 1), "unknown field"},
		{"two documents", string(good) + string(good), "after the document"},
		{"not JSON", "apiVersion: v1", "parsing"},
		{"too large", `{"x":"` + strings.Repeat("a", MaxDocumentBytes) + `"}`, "larger than"},
		{"seed not base64", strings.Replace(string(good), `"metaData":"`, `"metaData":"!!`, 1), "parsing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Decode() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestDecodeReport(t *testing.T) {
	ok := `{"apiVersion":"` + APIVersion + `","phase":"Writing","bytesWritten":10,"totalBytes":20,"bytesPerSecond":5}`
	r, err := DecodeReport(strings.NewReader(ok))
	if err != nil {
		t.Fatal(err)
	}
	if r.Phase != PhaseWriting || r.BytesWritten != 10 {
		t.Errorf("DecodeReport = %+v", r)
	}
	for _, bad := range []string{
		`{"apiVersion":"` + APIVersion + `","phase":"Exploded"}`,
		`{"apiVersion":"` + APIVersion + `","phase":"Writing","bytesWritten":30,"totalBytes":20}`,
		`{"apiVersion":"` + APIVersion + `","phase":"Writing","bytesWritten":-1}`,
		`{"apiVersion":"` + APIVersion + `","phase":"Failed","message":"` + strings.Repeat("x", MaxMessageBytes+1) + `"}`,
		`{"apiVersion":"` + APIVersion + `","phase":"Done","token":"x"}`,
		`{"apiVersion":"v0","phase":"Done"}`,
	} {
		if _, err := DecodeReport(strings.NewReader(bad)); err == nil {
			t.Errorf("DecodeReport(%.80s) accepted it", bad)
		}
	}
}

func TestSeedFromCloudInitFiles(t *testing.T) {
	cfg := cloudinit.Config{
		InstanceID: "op-1", Hostname: "worker-1", UserData: []byte("#cloud-config\n"),
		Network: &cloudinit.GuestNetwork{MAC: "52:54:00:12:34:56", Address: netip.MustParsePrefix("10.0.0.11/24"),
			Gateway: netip.MustParseAddr("10.0.0.1")},
	}
	files, err := cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := SeedFromFiles(files)
	if err != nil {
		t.Fatal(err)
	}
	if got := seed.Files(); len(got) != len(files) || string(got["network-config"]) != string(files["network-config"]) ||
		!strings.Contains(string(got["meta-data"]), "instance-id: op-1") {
		t.Errorf("seed files = %q, want cloudinit's %q", got, files)
	}
	if _, err := SeedFromFiles(map[string][]byte{"meta-data": []byte("x"), "../etc/passwd": nil}); err == nil {
		t.Error("SeedFromFiles accepted a file NoCloud does not read")
	}
}
