// Package installspec defines what the installer agent (cmd/stargate-installer) and the controller
// that boots it exchange: the per-Operation Spec the agent installs from, and the Report it sends
// back while it works. Both are versioned JSON documents; every field of a Spec is treated as hostile
// input and bounded by Validate before the agent acts on it.
package installspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
)

// APIVersion names the version of the Spec and Report documents.
const APIVersion = "installer.stargate.io/v1"

// ConfigPath is where the agent reads its Spec: a file of the initramfs. The per-Operation ISO
// carries it as a second initrd image (see pkg/installeriso), which the kernel unpacks over the
// agent's own initramfs before /init runs — so the Spec is there before any driver is loaded.
const ConfigPath = "/etc/stargate/install.json"

// ISOVolumeID is the ISO 9660 volume identifier of the installer ISO. The agent never installs to a
// block device that carries it (the virtual CD may show up as a plain disk, e.g. USB mass storage).
const ISOVolumeID = "STARGATE_INSTALLER"

// Bounds of a Spec. They keep a hostile or broken document from exhausting the agent's memory or
// the ISO's config slot.
const (
	// MaxDocumentBytes bounds the JSON document.
	MaxDocumentBytes = 1 << 20
	// MaxSeedBytes bounds the NoCloud seed files together (before base64).
	MaxSeedBytes = 512 << 10
	// MaxURLBytes bounds each URL.
	MaxURLBytes = 2048
	// MaxImageBytes bounds the declared image size (64 TiB).
	MaxImageBytes = 64 << 40
	// MaxCABundleBytes bounds the PEM CA bundle.
	MaxCABundleBytes = 64 << 10
	// MaxDNSServers is the number of name servers the resolver uses (resolv.conf's MAXNS).
	MaxDNSServers = 3
	// MaxHintBytes bounds a serial number or WWN hint.
	MaxHintBytes = 128
)

// Spec is everything the agent needs for one install. It holds a secret (the callback token):
// files and media carrying it are readable by their owner only, and only while the Operation runs.
type Spec struct {
	// APIVersion must be APIVersion.
	APIVersion string `json:"apiVersion"`
	// Image is the raw disk image to write.
	Image Image `json:"image"`
	// Network is the static network the agent configures to reach Image and Callback.
	Network Network `json:"network"`
	// RootDevice chooses the disk to install to.
	RootDevice RootDeviceHint `json:"rootDevice,omitzero"`
	// Seed is the NoCloud seed written to the partition labelled cidata.
	Seed Seed `json:"seed"`
	// Callback is where the agent reports progress.
	Callback Callback `json:"callback"`
	// CABundle (PEM) is the only set of roots trusted for https URLs: the initramfs has no system
	// certificate store. An https URL without a CABundle is refused.
	CABundle string `json:"caBundle,omitempty"`
}

// Image names a raw disk image.
type Image struct {
	// URL is an http or https URL of the raw image.
	URL string `json:"url"`
	// ChunkedSHA256 is the image's digest (ImageDigest: the sha256 of its 4 MiB chunks' sha256
	// sums), 64 lowercase hex digits.
	ChunkedSHA256 string `json:"chunkedSHA256"`
	// SizeBytes is the image's size when known (0: unknown). A known size lets the agent refuse a
	// disk that is too small before writing, and the server's Content-Length must agree with it.
	SizeBytes int64 `json:"sizeBytes,omitempty"`
}

// Network is one static IP configuration.
type Network struct {
	// MAC selects the interface to configure.
	MAC string `json:"mac"`
	// Address with prefix length, e.g. 10.0.0.11/24.
	Address string `json:"address"`
	// Gateway is the default route (optional: without it only on-link addresses are reachable).
	Gateway string `json:"gateway,omitempty"`
	// DNS servers, for URLs that name hosts.
	DNS []string `json:"dns,omitempty"`
}

// RootDeviceHint selects the target disk. Serial and WWN must match exactly (case and surrounding
// blanks aside); MinSizeBytes excludes smaller disks. With no hint, the only eligible disk is chosen
// and several eligible disks are refused as ambiguous.
type RootDeviceHint struct {
	Serial       string `json:"serial,omitempty"`
	WWN          string `json:"wwn,omitempty"`
	MinSizeBytes int64  `json:"minSizeBytes,omitempty"`
}

// Seed holds the NoCloud files as they are to appear on the cidata file system (base64 in JSON).
type Seed struct {
	MetaData      []byte `json:"metaData"`
	UserData      []byte `json:"userData"`
	NetworkConfig []byte `json:"networkConfig,omitempty"`
	VendorData    []byte `json:"vendorData,omitempty"`
}

// Files returns the seed's files by their NoCloud names; absent optional files are left out.
func (s Seed) Files() map[string][]byte {
	files := map[string][]byte{"meta-data": s.MetaData, "user-data": s.UserData}
	if len(s.NetworkConfig) > 0 {
		files["network-config"] = s.NetworkConfig
	}
	if len(s.VendorData) > 0 {
		files["vendor-data"] = s.VendorData
	}
	return files
}

// SeedFromFiles makes a Seed of NoCloud files by name (pkg/cloudinit's Config.Files), refusing
// names NoCloud does not read.
func SeedFromFiles(files map[string][]byte) (Seed, error) {
	var s Seed
	for name, content := range files {
		switch name {
		case "meta-data":
			s.MetaData = content
		case "user-data":
			s.UserData = content
		case "network-config":
			s.NetworkConfig = content
		case "vendor-data":
			s.VendorData = content
		default:
			return Seed{}, fmt.Errorf("seed file %q is not one NoCloud reads", truncate(name))
		}
	}
	return s, s.validate()
}

// Callback is where Reports go.
type Callback struct {
	// URL receives each Report as a POST.
	URL string `json:"url"`
	// Token authenticates the agent for this Operation only (Authorization: Bearer).
	Token string `json:"token"`
}

var (
	sha256Pattern = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// Tokens travel in an HTTP header: a conservative alphabet keeps them header-safe.
	tokenPattern = regexp.MustCompile(`^[A-Za-z0-9._~+/=-]{32,512}$`)
)

// Decode reads one Spec document of at most MaxDocumentBytes, refusing unknown fields and trailing
// data, and validates it.
func Decode(r io.Reader) (*Spec, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxDocumentBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading install spec: %w", err)
	}
	if len(data) > MaxDocumentBytes {
		return nil, fmt.Errorf("install spec is larger than %d bytes", MaxDocumentBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("parsing install spec: %w", err)
	}
	if dec.More() {
		return nil, errors.New("parsing install spec: data after the document")
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// Encode returns the Spec as JSON after validating it.
func (s *Spec) Encode() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encoding install spec: %w", err)
	}
	if len(b) > MaxDocumentBytes {
		return nil, fmt.Errorf("install spec encodes to %d bytes, more than %d", len(b), MaxDocumentBytes)
	}
	return b, nil
}

// Validate checks every field; the error names the field and what is wrong with it.
func (s *Spec) Validate() error {
	if s.APIVersion != APIVersion {
		return fmt.Errorf("apiVersion %q is not %q", truncate(s.APIVersion), APIVersion)
	}
	if s.CABundle != "" {
		if len(s.CABundle) > MaxCABundleBytes {
			return fmt.Errorf("caBundle is larger than %d bytes", MaxCABundleBytes)
		}
		if !strings.Contains(s.CABundle, "-----BEGIN CERTIFICATE-----") {
			return errors.New("caBundle holds no PEM certificate")
		}
	}
	if err := validateURL("image.url", s.Image.URL, s.CABundle != ""); err != nil {
		return err
	}
	if !sha256Pattern.MatchString(s.Image.ChunkedSHA256) {
		return errors.New("image.chunkedSHA256 must be 64 lowercase hex digits")
	}
	if s.Image.SizeBytes < 0 || s.Image.SizeBytes > MaxImageBytes {
		return fmt.Errorf("image.sizeBytes %d is outside 0..%d", s.Image.SizeBytes, int64(MaxImageBytes))
	}
	if err := s.Network.validate(); err != nil {
		return err
	}
	if err := s.RootDevice.validate(); err != nil {
		return err
	}
	if err := s.Seed.validate(); err != nil {
		return err
	}
	if err := validateURL("callback.url", s.Callback.URL, s.CABundle != ""); err != nil {
		return err
	}
	if !tokenPattern.MatchString(s.Callback.Token) {
		return errors.New("callback.token must be 32 to 512 characters of A-Z a-z 0-9 . _ ~ + / = -")
	}
	return nil
}

func validateURL(field, raw string, haveCA bool) error {
	if raw == "" {
		return fmt.Errorf("%s is empty", field)
	}
	if len(raw) > MaxURLBytes {
		return fmt.Errorf("%s is longer than %d bytes", field, MaxURLBytes)
	}
	for _, r := range raw {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("%s contains a blank or control character", field)
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	switch u.Scheme {
	case "http":
	case "https":
		if !haveCA {
			return fmt.Errorf("%s is https but the spec has no caBundle (the installer has no other trust roots)", field)
		}
	default:
		return fmt.Errorf("%s must be an http or https URL, not %q", field, truncate(u.Scheme))
	}
	if u.User != nil {
		return fmt.Errorf("%s must not carry credentials", field)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%s has no host", field)
	}
	if u.Fragment != "" {
		return fmt.Errorf("%s must not have a fragment", field)
	}
	return nil
}

func (n Network) validate() error {
	mac, err := net.ParseMAC(n.MAC)
	if err != nil || len(mac) != 6 {
		return fmt.Errorf("network.mac %q is not a 48-bit MAC address", truncate(n.MAC))
	}
	prefix, err := netip.ParsePrefix(n.Address)
	if err != nil {
		return fmt.Errorf("network.address %q is not an address with prefix length (e.g. 10.0.0.11/24)", truncate(n.Address))
	}
	addr := prefix.Addr()
	if addr.Zone() != "" || !addr.IsGlobalUnicast() {
		return fmt.Errorf("network.address %s is not a unicast address", addr)
	}
	if prefix.Bits() == 0 {
		return fmt.Errorf("network.address %s has a zero-length prefix", prefix)
	}
	if n.Gateway != "" {
		gw, err := netip.ParseAddr(n.Gateway)
		if err != nil || gw.Zone() != "" {
			return fmt.Errorf("network.gateway %q is not an IP address", truncate(n.Gateway))
		}
		if gw.Is4() != addr.Is4() {
			return fmt.Errorf("network.gateway %s and network.address %s are of different IP families", gw, prefix)
		}
		if !prefix.Masked().Contains(gw) || gw == addr {
			return fmt.Errorf("network.gateway %s is not another address on network.address's subnet %s", gw, prefix.Masked())
		}
	}
	if len(n.DNS) > MaxDNSServers {
		return fmt.Errorf("network.dns has %d servers, at most %d are used", len(n.DNS), MaxDNSServers)
	}
	for _, d := range n.DNS {
		if a, err := netip.ParseAddr(d); err != nil || a.Zone() != "" {
			return fmt.Errorf("network.dns entry %q is not an IP address", truncate(d))
		}
	}
	return nil
}

func (h RootDeviceHint) validate() error {
	for field, v := range map[string]string{"rootDevice.serial": h.Serial, "rootDevice.wwn": h.WWN} {
		if len(v) > MaxHintBytes {
			return fmt.Errorf("%s is longer than %d bytes", field, MaxHintBytes)
		}
		for _, r := range v {
			if r < ' ' || r > '~' {
				return fmt.Errorf("%s contains a character other than printable ASCII", field)
			}
		}
		if v != "" && strings.TrimSpace(v) == "" {
			return fmt.Errorf("%s is blank", field)
		}
	}
	if h.MinSizeBytes < 0 || h.MinSizeBytes > MaxImageBytes {
		return fmt.Errorf("rootDevice.minSizeBytes %d is outside 0..%d", h.MinSizeBytes, int64(MaxImageBytes))
	}
	return nil
}

func (s Seed) validate() error {
	total := len(s.MetaData) + len(s.UserData) + len(s.NetworkConfig) + len(s.VendorData)
	if total > MaxSeedBytes {
		return fmt.Errorf("seed files hold %d bytes together, more than %d", total, MaxSeedBytes)
	}
	if len(s.MetaData) == 0 {
		return errors.New("seed.metaData is empty (NoCloud needs at least an instance-id)")
	}
	return nil
}

// truncate shortens a hostile value quoted in an error message.
func truncate(s string) string {
	const maxQuoted = 64
	if len(s) > maxQuoted {
		return s[:maxQuoted] + "..."
	}
	return s
}
