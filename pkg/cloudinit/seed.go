// Package cloudinit builds what cloud-init reads in a fresh guest and reads back what the guest
// reports: the NoCloud seed ISO (meta-data, user-data, vendor-data, network-config) and the
// readiness protocol (vendor-data that prints cloud-init's result on the serial console, the
// parser of that line, and a console tail for status messages).
package cloudinit

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"sigs.k8s.io/yaml"
)

// VolumeLabel is the volume label cloud-init's NoCloud datasource looks for.
const VolumeLabel = "cidata"

// GuestNetwork is the static network configuration handed to a guest.
type GuestNetwork struct {
	// MAC of the guest NIC the configuration applies to.
	MAC string
	// Address is the guest's address with prefix length, e.g. 192.168.100.11/24.
	Address netip.Prefix
	// Gateway is the default route, usually the bridge address.
	Gateway netip.Addr
	// DNS servers. May be empty.
	DNS []netip.Addr
}

// Config is the content of a NoCloud seed.
type Config struct {
	// InstanceID changes on every install: cloud-init runs its per-instance modules once per ID.
	InstanceID string
	// Hostname becomes local-hostname.
	Hostname string
	// UserData is handed to the guest unchanged; the controller checked it with userdata.Validate
	// before the repave started.
	UserData []byte
	// VendorData is optional; Stargate uses it to learn when cloud-init finished (see
	// ReadinessVendorData). User-data can override it, as cloud-init defines.
	VendorData []byte
	// Network, when set, becomes network-config (version 2).
	Network *GuestNetwork
}

// metaData renders NoCloud meta-data.
func (c Config) metaData() []byte {
	return fmt.Appendf(nil, "instance-id: %s\nlocal-hostname: %s\n", c.InstanceID, c.Hostname)
}

// networkConfig renders network-config version 2, matched by MAC so the guest's interface name
// does not matter.
func (n GuestNetwork) networkConfig() ([]byte, error) {
	eth := map[string]any{
		"match":     map[string]any{"macaddress": strings.ToLower(n.MAC)},
		"addresses": []string{n.Address.String()},
		// gateway4 rather than routes: understood by every cloud-init renderer still in use.
		"gateway4": n.Gateway.String(),
	}
	if len(n.DNS) > 0 {
		dns := make([]string, len(n.DNS))
		for i, a := range n.DNS {
			dns[i] = a.String()
		}
		eth["nameservers"] = map[string]any{"addresses": dns}
	}
	return yaml.Marshal(map[string]any{
		"version":   2,
		"ethernets": map[string]any{"nic0": eth},
	})
}

// Files returns the seed's files by their NoCloud names: exactly what WriteNoCloudISO writes, for
// media that carry the seed another way (the installer's cidata partition, see pkg/installspec).
func (c Config) Files() (map[string][]byte, error) { return c.files() }

// files returns the seed's files by name.
func (c Config) files() (map[string][]byte, error) {
	if c.InstanceID == "" || c.Hostname == "" {
		return nil, fmt.Errorf("cloud-init seed needs an instance-id and a hostname")
	}
	if strings.ContainsAny(c.InstanceID+c.Hostname, "\n\r:") {
		return nil, fmt.Errorf("instance-id %q or hostname %q contains a character meta-data cannot carry", c.InstanceID, c.Hostname)
	}
	files := map[string][]byte{
		"meta-data": c.metaData(),
		"user-data": c.UserData,
	}
	if len(c.VendorData) > 0 {
		files["vendor-data"] = c.VendorData
	}
	if c.Network != nil {
		nc, err := c.Network.networkConfig()
		if err != nil {
			return nil, fmt.Errorf("rendering network-config: %w", err)
		}
		files["network-config"] = nc
	}
	return files, nil
}

// WriteNoCloudISO writes a NoCloud seed ISO (label "cidata", Rock Ridge and Joliet names) to path,
// mode 0600 because user-data may carry join tokens. It writes a temporary file and renames it,
// so a VM never boots from a half-written seed.
func WriteNoCloudISO(path string, cfg Config) error {
	files, err := cfg.files()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".cidata-*.iso")
	if err != nil {
		return fmt.Errorf("creating seed ISO: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("securing seed ISO: %w", err)
	}
	// The ISO writer stages files in a workspace; keep it private too (MkdirTemp is 0700).
	workspace, err := os.MkdirTemp(dir, ".cidata-ws-*")
	if err != nil {
		tmp.Close()
		return fmt.Errorf("creating seed ISO workspace: %w", err)
	}
	defer os.RemoveAll(workspace)

	fs, err := iso9660.Create(file.New(tmp, false), 0, 0, 2048, workspace)
	if err != nil {
		tmp.Close()
		return fmt.Errorf("creating ISO filesystem: %w", err)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		f, err := fs.OpenFile(name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			tmp.Close()
			return fmt.Errorf("adding %s to seed ISO: %w", name, err)
		}
		if _, err := f.Write(files[name]); err != nil {
			tmp.Close()
			return fmt.Errorf("writing %s to seed ISO: %w", name, err)
		}
	}
	if err := fs.Finalize(iso9660.FinalizeOptions{RockRidge: true, Joliet: true, VolumeIdentifier: VolumeLabel}); err != nil {
		tmp.Close()
		return fmt.Errorf("finalizing seed ISO: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing seed ISO: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing seed ISO: %w", err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("installing seed ISO: %w", err)
	}
	return nil
}

// ReadNoCloudISO reads a seed ISO back: its volume label and files. Tests and diagnostics use it;
// the host kernel may have no iso9660 driver, so it never mounts.
func ReadNoCloudISO(path string) (label string, files map[string][]byte, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", nil, err
	}
	fs, err := iso9660.Read(file.New(f, true), st.Size(), 0, 2048)
	if err != nil {
		return "", nil, fmt.Errorf("reading ISO %s: %w", path, err)
	}
	entries, err := fs.ReadDir(".")
	if err != nil {
		return "", nil, fmt.Errorf("listing ISO %s: %w", path, err)
	}
	files = map[string][]byte{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		r, err := fs.OpenFile(e.Name(), os.O_RDONLY)
		if err != nil {
			return "", nil, fmt.Errorf("opening %s in ISO: %w", e.Name(), err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			return "", nil, fmt.Errorf("reading %s in ISO: %w", e.Name(), err)
		}
		files[e.Name()] = b
	}
	return strings.TrimRight(fs.Label(), " \x00"), files, nil
}
