package scripts_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"stargate.io/stargate/internal/testenv"
)

// debianMirror runs lib.sh's debian_mirror for bookworm against an apt directory made of files
// (name → content), with env added, and returns its stdout, stderr and error.
func debianMirror(t *testing.T, files map[string]string, env ...string) (string, string, error) {
	t.Helper()
	apt := t.TempDir()
	if err := os.MkdirAll(filepath.Join(apt, "sources.list.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(apt, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := "set -euo pipefail\nLOG_TAG=test\nsource " + filepath.Join(testenv.RepoRoot(), "scripts", "lib.sh") +
		"\ndebian_mirror bookworm " + apt + "\n"
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "STARGATE_DEBIAN_MIRROR=")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), strings.ReplaceAll(stderr.String(), apt+"/", ""), err
}

// The guest image build takes its mirror from the host's apt sources, in either format, or from
// STARGATE_DEBIAN_MIRROR, and says which; the host names in these cases are made up.
func TestDebianMirrorFromAptSources(t *testing.T) {
	for _, tc := range []struct {
		name     string
		files    map[string]string
		env      []string
		want     string // the mirror printed
		wantFrom string // where the log line says it came from
	}{
		{
			name: "deb822, security and updates first",
			files: map[string]string{"sources.list.d/debian.sources": `Types: deb
# a comment
URIs: http://mirror-a.example/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
URIs: http://mirror-a.example/debian/
Suites: bookworm-updates bookworm
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`},
			want: "http://mirror-a.example/debian", wantFrom: "sources.list.d/debian.sources",
		},
		{
			name: "one-line, with options, comments and deb-src",
			files: map[string]string{"sources.list": `# deb http://commented.example/debian bookworm main
deb-src http://src-only.example/debian bookworm main
deb http://mirror-b.example/debian bookworm-updates main
deb [ arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg ] https://mirror-b.example/debian bookworm contrib main # trailing
`},
			want: "https://mirror-b.example/debian", wantFrom: "sources.list",
		},
		{
			name: "sources.list before sources.list.d",
			files: map[string]string{
				"sources.list":                    "deb http://first.example/debian bookworm main\n",
				"sources.list.d/a-debian.sources": "Types: deb\nURIs: http://second.example/debian\nSuites: bookworm\nComponents: main\n",
			},
			want: "http://first.example/debian", wantFrom: "sources.list",
		},
		{
			name: "third-party repositories, disabled entries and other files do not count",
			files: map[string]string{
				"sources.list.d/a-vendor.list": "deb [signed-by=/usr/share/keyrings/vendor.gpg] https://vendor.example/debian/12/prod bookworm main\n",
				"sources.list.d/b-inline.sources": "Types: deb\nURIs: https://inline.example/debian\nSuites: bookworm\nComponents: main\n" +
					"Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n xyz\n",
				"sources.list.d/c-off.sources":  "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n",
				"sources.list.d/d-cd.list":      "deb cdrom:[Debian 12]/ bookworm main\n",
				"sources.list.d/e-old.list.bak": "deb http://backup.example/debian bookworm main\n",
				// The last stanza of a file without a blank line after it, then another file.
				"sources.list.d/f-debian.sources": "Types: deb\nURIs: http://mirror-f.example/debian\nSuites: bookworm\nComponents: main",
				"sources.list.d/g-other.list":     "deb http://mirror-g.example/debian bookworm main\n",
			},
			want: "http://mirror-f.example/debian", wantFrom: "sources.list.d/f-debian.sources",
		},
		{
			name:  "the variable wins",
			files: map[string]string{"sources.list": "deb http://host-mirror.example/debian bookworm main\n"},
			env:   []string{"STARGATE_DEBIAN_MIRROR=http://operator.example/debian/"},
			want:  "http://operator.example/debian", wantFrom: "STARGATE_DEBIAN_MIRROR",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, log, err := debianMirror(t, tc.files, tc.env...)
			if err != nil {
				t.Fatalf("%v\n%s", err, log)
			}
			if out != tc.want+"\n" {
				t.Errorf("mirror %q, want %q", out, tc.want)
			}
			if want := "[test] Debian mirror: " + tc.want + " (from " + tc.wantFrom + ")\n"; log != want {
				t.Errorf("log %q, want %q", log, want)
			}
		})
	}
}

func TestDebianMirrorNoneFound(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"no sources":           {},
		"another distribution": {"sources.list": "deb http://archive.example/ubuntu jammy main\n"},
	} {
		t.Run(name, func(t *testing.T) {
			out, log, err := debianMirror(t, files)
			if err == nil || out != "" || !strings.Contains(log, "ERROR: no Debian mirror for bookworm") || !strings.Contains(log, "set STARGATE_DEBIAN_MIRROR") {
				t.Errorf("err %v, out %q, log %q; want a failure naming STARGATE_DEBIAN_MIRROR", err, out, log)
			}
		})
	}
	out, log, err := debianMirror(t, nil, "STARGATE_DEBIAN_MIRROR=deb.example/debian")
	if err == nil || out != "" || !strings.Contains(log, "STARGATE_DEBIAN_MIRROR=deb.example/debian is no http://") {
		t.Errorf("a variable without a scheme: err %v, out %q, log %q; want refused", err, out, log)
	}
}
