package cloudinit

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"stargate.io/stargate/internal/testreq"
)

// CombineUserData is read by cloud-init with Python's email package: the test reads it back with
// the same package (someone else's MIME parser) and checks every part arrives whole, in order,
// with the type cloud-init then infers from it and the merge rule for cloud-config parts.
func TestCombineUserDataReadByPythonEmail(t *testing.T) {
	python := testreq.Command(t, "python3", "apt-get install -y python3")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte("#cloud-config\nruncmd: [gzipped]\n"))
	_ = zw.Close()
	nested := "Content-Type: multipart/mixed; boundary=\"inner\"\r\nMIME-Version: 1.0\r\n\r\n--inner\r\n" +
		"Content-Type: text/x-shellscript\r\n\r\n#!/bin/sh\necho nested\n\r\n--inner--\r\n"
	parts := [][]byte{
		[]byte("#cloud-config\nruncmd:\n  - echo installation\n"),
		// Content that looks like MIME framing must stay content.
		[]byte("#!/bin/sh\necho '--stargate-0000'\necho 'Content-Type: text/html'\n\n\necho end\n"),
		gz.Bytes(),
		[]byte(nested),
		[]byte("#cloud-config\nruncmd:\n  - echo per-instance\n"),
	}
	archive, err := CombineUserData(parts...)
	if err != nil {
		t.Fatal(err)
	}
	if !isMIMEArchive(archive) {
		t.Fatal("cloud-init would not read the archive as MIME (no MIME-Version in its first 4 KiB)")
	}
	file := filepath.Join(t.TempDir(), "user-data")
	if err := os.WriteFile(file, archive, 0o600); err != nil {
		t.Fatal(err)
	}
	const read = `
import email, json, sys
msg = email.message_from_bytes(open(sys.argv[1], 'rb').read())
out = []
for part in msg.walk():
    if part.get_content_maintype() == 'multipart':
        continue
    out.append({'type': part.get_content_type(), 'merge': part.get('Merge-Type', ''),
                'payload': part.get_payload(decode=True).hex()})
print(json.dumps(out))
`
	raw, err := exec.Command(python, "-c", read, file).Output()
	if err != nil {
		t.Fatalf("python's email package cannot read the archive: %v", err)
	}
	var got []struct{ Type, Merge, Payload string }
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	want := []struct{ typ, merge, payload string }{
		{"text/plain", appendMergeType, string(parts[0])},
		{"text/plain", appendMergeType, string(parts[1])},
		{"application/x-gzip", appendMergeType, gz.String()},
		{"text/x-shellscript", "", "#!/bin/sh\necho nested\n"},
		{"text/plain", appendMergeType, string(parts[4])},
	}
	if len(got) != len(want) {
		t.Fatalf("%d parts read back, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Type != w.typ || got[i].Merge != w.merge || got[i].Payload != hex.EncodeToString([]byte(w.payload)) {
			t.Errorf("part %d: %s %q %q, want %s %q %q", i, got[i].Type, got[i].Merge, got[i].Payload, w.typ, w.merge, w.payload)
		}
	}
}
