package cloudinit

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestWriteNoCloudISOReadsBack(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "seed.iso")
	userData := []byte("#cloud-config\nruncmd:\n  - [kubeadm, join, '192.168.100.1:6443', --token, abcdef.0123456789abcdef]\n")
	cfg := Config{
		InstanceID: "i-0123",
		Hostname:   "worker-1",
		UserData:   userData,
		VendorData: ReadinessVendorData("i-0123"),
		Network: &GuestNetwork{
			MAC:     "52:54:00:AA:BB:CC",
			Address: netip.MustParsePrefix("192.168.100.11/24"),
			Gateway: netip.MustParseAddr("192.168.100.1"),
			DNS:     []netip.Addr{netip.MustParseAddr("192.168.100.1")},
		},
	}
	if err := WriteNoCloudISO(path, cfg); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("seed ISO mode %v, want 0600 (user-data may carry join tokens)", st.Mode().Perm())
	}
	label, files, err := ReadNoCloudISO(path)
	if err != nil {
		t.Fatal(err)
	}
	if label != "cidata" {
		t.Errorf("volume label %q, want cidata", label)
	}
	if string(files["user-data"]) != string(userData) {
		t.Errorf("user-data = %q, want it unchanged", files["user-data"])
	}
	if got := string(files["meta-data"]); got != "instance-id: i-0123\nlocal-hostname: worker-1\n" {
		t.Errorf("meta-data = %q", got)
	}
	if !strings.Contains(string(files["vendor-data"]), `"i-0123"`) {
		t.Errorf("vendor-data does not carry the instance-id: %q", files["vendor-data"])
	}
	var nc struct {
		Version   int `json:"version"`
		Ethernets map[string]struct {
			Match       map[string]string `json:"match"`
			Addresses   []string          `json:"addresses"`
			Gateway4    string            `json:"gateway4"`
			Nameservers struct {
				Addresses []string `json:"addresses"`
			} `json:"nameservers"`
		} `json:"ethernets"`
	}
	if err := yaml.Unmarshal(files["network-config"], &nc); err != nil {
		t.Fatalf("network-config is not YAML: %v\n%s", err, files["network-config"])
	}
	eth := nc.Ethernets["nic0"]
	if nc.Version != 2 || eth.Match["macaddress"] != "52:54:00:aa:bb:cc" || len(eth.Addresses) != 1 ||
		eth.Addresses[0] != "192.168.100.11/24" || eth.Gateway4 != "192.168.100.1" || eth.Nameservers.Addresses[0] != "192.168.100.1" {
		t.Errorf("network-config = %+v", nc)
	}
	// No temporary files or workspaces are left next to the seed.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the seed", len(entries))
	}
}

func TestWriteNoCloudISOReplacesExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seed.iso")
	for _, id := range []string{"i-1", "i-2"} {
		if err := WriteNoCloudISO(path, Config{InstanceID: id, Hostname: "h", UserData: []byte("#!/bin/sh\ntrue\n")}); err != nil {
			t.Fatal(err)
		}
	}
	_, files, err := ReadNoCloudISO(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(files["meta-data"]), "i-2") {
		t.Errorf("meta-data %q, want the second instance-id", files["meta-data"])
	}
	if _, ok := files["network-config"]; ok {
		t.Error("network-config present although no network was given")
	}
}

func TestConfigRejectsBadMetaData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seed.iso")
	for _, cfg := range []Config{
		{Hostname: "h", UserData: []byte("x")},
		{InstanceID: "i", UserData: []byte("x")},
		{InstanceID: "i\nfoo: bar", Hostname: "h", UserData: []byte("x")},
	} {
		if err := WriteNoCloudISO(path, cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

func TestParseGuestResult(t *testing.T) {
	console := []byte("[  1.0] Linux version ...\r\n" +
		"STARGATE-READY {\"instance_id\": \"i-old\", \"errors\": []}\n" +
		"\x1b[0;32m  OK  \x1b[0m] Started cloud-final\n" +
		"STARGATE-READY {\"instance_id\": \"i-new\", \"errors\": [\"('scripts_user', RuntimeError('Runparts: 1 failures'))\"]}\r\n")
	if r := ParseGuestResult(console, "i-missing"); r.Done {
		t.Errorf("result for an instance-id that never reported: %+v", r)
	}
	if r := ParseGuestResult(console, "i-old"); !r.Done || len(r.Errors) != 0 {
		t.Errorf("i-old: %+v, want done without errors", r)
	}
	r := ParseGuestResult(console, "i-new")
	if !r.Done || len(r.Errors) != 1 || !strings.Contains(r.Errors[0], "scripts_user") {
		t.Errorf("i-new: %+v, want done with the scripts_user error", r)
	}
	if r := ParseGuestResult([]byte("STARGATE-READY {broken\n"), "i-new"); r.Done {
		t.Errorf("broken line parsed as done: %+v", r)
	}
}

func TestConsoleTail(t *testing.T) {
	var b strings.Builder
	for i := range 100 {
		b.WriteString("\x1b[0;32mline ")
		b.WriteString(strings.Repeat("x", i%7))
		b.WriteString("\x1b[0m\r\n")
	}
	tail := ConsoleTail([]byte(b.String()), 5, 1000)
	if n := strings.Count(tail, "\n"); n != 4 {
		t.Errorf("tail has %d newlines, want 4 (5 lines):\n%s", n, tail)
	}
	if strings.ContainsAny(tail, "\x1b\r") {
		t.Errorf("tail keeps control characters: %q", tail)
	}
	if got := ConsoleTail([]byte(b.String()), 100, 50); len(got) > 50 {
		t.Errorf("tail is %d bytes, want at most 50", len(got))
	}
}
