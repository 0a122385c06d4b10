package cloudinit

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// appendMergeType makes cloud-init merge a "#cloud-config" part into the ones before it the way a
// person combining two documents expects: lists (runcmd, write_files, packages, ...) are appended
// to, nested maps merged, and any other value of the later part wins. cloud-init's default for a
// multi-part archive would replace a whole list that both parts set.
const appendMergeType = "list(append)+dict(recurse_array)+str()"

// CombineUserData joins user-data documents into one MIME multi-part archive that cloud-init runs
// as if each were given, in this order. Used to install a profile the stock way: its installation,
// then the per-instance user-data.
//
// Each part is text/plain, so cloud-init tells its type by its first line as it does for plain
// user-data ("#cloud-config", "#!", "#include", "## template: jinja", ...); gzip-compressed parts
// are declared so, and cloud-init decompresses them first; "#cloud-config" parts merge as
// appendMergeType says. Parts are base64-encoded, so no content can end the archive early or add
// headers. A part that is itself a MIME archive is nested as it is (cloud-init walks nested
// archives), under a boundary that occurs in no part.
func CombineUserData(parts ...[]byte) ([]byte, error) {
	boundary, err := newBoundary(parts)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "Content-Type: multipart/mixed; boundary=\"%s\"\r\nMIME-Version: 1.0\r\n", boundary)
	for _, part := range parts {
		fmt.Fprintf(&out, "\r\n--%s\r\n", boundary)
		if isMIMEArchive(part) {
			out.Write(part) // its own headers, a blank line, its body
			continue
		}
		contentType := `text/plain; charset="utf-8"`
		if bytes.HasPrefix(part, []byte{0x1f, 0x8b}) {
			contentType = "application/x-gzip"
		}
		fmt.Fprintf(&out, "Content-Type: %s\r\nContent-Transfer-Encoding: base64\r\nMerge-Type: %s\r\n\r\n", contentType, appendMergeType)
		enc := base64.StdEncoding.EncodeToString(part)
		for len(enc) > 76 { // RFC 2045's line length
			out.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		out.WriteString(enc + "\r\n")
	}
	fmt.Fprintf(&out, "\r\n--%s--\r\n", boundary)
	return out.Bytes(), nil
}

// isMIMEArchive says whether cloud-init reads user-data as a MIME message, as cloud-init decides
// it: "mime-version:" in its first 4 KiB.
func isMIMEArchive(b []byte) bool {
	return strings.Contains(strings.ToLower(string(b[:min(len(b), 4096)])), "mime-version:")
}

// newBoundary is a random MIME boundary that none of parts contains.
func newBoundary(parts [][]byte) (string, error) {
	for {
		var r [16]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", fmt.Errorf("choosing a MIME boundary: %w", err)
		}
		boundary := "stargate-" + hex.EncodeToString(r[:])
		clash := false
		for _, p := range parts {
			clash = clash || bytes.Contains(p, []byte(boundary))
		}
		if !clash {
			return boundary, nil
		}
	}
}
