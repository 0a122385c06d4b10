package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"stargate.io/stargate/internal/testreq"
)

const testTag = "localhost/stargate-redfish-dc:test"

// TestImage builds the image twice from the real static simulator and inspects it with skopeo and
// umoci (other people's OCI clients, not the library that wrote it): the config, the layers, the
// files, the binary running as uid 65532 inside the unpacked root, and the digest again.
func TestImage(t *testing.T) {
	skopeo := testreq.Command(t, "skopeo", "sudo apt-get install -y skopeo (or make deps as root)")
	umoci := testreq.Command(t, "umoci", "sudo apt-get install -y umoci (or make deps as root)")
	testreq.Command(t, "qemu-img", "sudo apt-get install -y qemu-utils (or make deps as root)")

	dir := t.TempDir()
	bin := filepath.Join(dir, "simulator")
	// The flags of `make image`: once cached, this build takes seconds.
	goBuild := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -buildid=", "-o", bin, "./cmd/simulator")
	goBuild.Dir, goBuild.Env = repoRoot(), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := goBuild.CombinedOutput(); err != nil {
		t.Fatalf("building the static simulator: %v\n%s", err, out)
	}
	iso := filepath.Join(dir, "installer.iso")
	isoData := []byte("stands for the installer ISO: the builder copies it as it is")
	if err := os.WriteFile(iso, isoData, 0o644); err != nil {
		t.Fatal(err)
	}
	o := options{Binary: bin, InstallerISO: iso, QemuImg: "/usr/bin/qemu-img", CACerts: "/etc/ssl/certs/ca-certificates.crt",
		Tag: testTag, Source: "stargate.io/stargate", Version: "v0.0.0-test", Revision: "0123abc", Epoch: 1700000000}
	if _, err := os.Stat(o.CACerts); err != nil {
		testreq.Need(t, o.CACerts, "sudo apt-get install -y ca-certificates (or make deps as root)")
	}

	layouts := map[string]string{}
	for _, name := range []string{"a", "b"} {
		o.Layout = filepath.Join(dir, "oci-"+name)
		if name == "a" {
			o.Tarball = filepath.Join(dir, "image.tar")
		}
		digest, _, err := build(o)
		if err != nil {
			t.Fatalf("build %s: %v", name, err)
		}
		layouts[name] = digest
		o.Tarball = ""
	}
	if layouts["a"] != layouts["b"] {
		t.Fatalf("two builds of the same inputs differ: %s and %s", layouts["a"], layouts["b"])
	}
	o.Layout, o.Epoch = filepath.Join(dir, "oci-later"), o.Epoch+1
	if later, _, err := build(o); err != nil || later == layouts["a"] {
		t.Errorf("a build with another --epoch: digest %s (err %v), want one other than %s", later, err, layouts["a"])
	}
	ref := "oci:" + filepath.Join(dir, "oci-a") + ":" + strings.Split(testTag, ":")[1]

	// skopeo: the manifest and the config as a container engine sees them.
	var manifest struct {
		Digest string
		Layers []string
		Labels map[string]string
	}
	runJSON(t, &manifest, skopeo, "inspect", ref)
	if manifest.Digest != layouts["a"] || len(manifest.Layers) != 4 {
		t.Errorf("skopeo: digest %s with %d layers, want %s with 4", manifest.Digest, len(manifest.Layers), layouts["a"])
	}
	if manifest.Labels["org.opencontainers.image.revision"] != "0123abc" || manifest.Labels["org.opencontainers.image.version"] != "v0.0.0-test" ||
		manifest.Labels["org.opencontainers.image.source"] != "stargate.io/stargate" {
		t.Errorf("skopeo: labels %v", manifest.Labels)
	}
	// The archive for podman load / ctr import carries the same config.
	for _, r := range []string{ref, "docker-archive:" + filepath.Join(dir, "image.tar")} {
		var config struct {
			Created string
			Config  struct {
				User       string
				Entrypoint []string
			}
		}
		runJSON(t, &config, skopeo, "inspect", "--config", r)
		if config.Config.User != "65532:65532" || !slices.Equal(config.Config.Entrypoint, []string{imageBinary, "--provider=redfish",
			"--installer-iso=" + imageInstallerISO, "--work-dir=" + imageWorkDir}) || config.Created != "2023-11-14T22:13:20Z" {
			t.Errorf("skopeo %s: config %+v", r, config)
		}
	}

	// umoci: the root file system, unpacked the way a runtime would.
	bundle := filepath.Join(dir, "bundle")
	args := []string{"unpack", "--image", strings.TrimPrefix(ref, "oci:"), bundle}
	if os.Geteuid() != 0 {
		args = slices.Insert(args, 1, "--rootless")
	}
	if out, err := exec.Command(umoci, args...).CombinedOutput(); err != nil {
		t.Fatalf("umoci %v: %v\n%s", args, err, out)
	}
	rootfs := filepath.Join(bundle, "rootfs")
	sameFile(t, filepath.Join(rootfs, imageBinary), bin)
	sameFile(t, filepath.Join(rootfs, imageInstallerISO), iso)
	var spec struct {
		Process struct {
			User struct{ UID, GID uint32 }
		}
	}
	readJSON(t, filepath.Join(bundle, "config.json"), &spec)
	if spec.Process.User.UID != nonrootID || spec.Process.User.GID != nonrootID {
		t.Errorf("umoci: the runtime spec runs as %+v, want uid and gid %d", spec.Process.User, nonrootID)
	}
	if fi, err := os.Stat(filepath.Join(rootfs, imageWorkDir)); err != nil || fi.Sys().(*syscall.Stat_t).Uid != nonrootID && os.Geteuid() == 0 {
		t.Errorf("the work directory: %v, want it owned by %d", err, nonrootID)
	}

	// Inside the unpacked root, as the image's user: the controller and qemu-img start.
	if os.Geteuid() != 0 {
		testreq.Need(t, "root (to chroot into the unpacked image as uid 65532)", "run the tests as root: sudo make test")
	}
	out := runInRoot(t, rootfs, imageBinary, "--help")
	if !strings.Contains(out, "-installer-iso") {
		t.Errorf("simulator --help in the image says:\n%s", out)
	}
	if out := runInRoot(t, rootfs, "/usr/bin/qemu-img", "--version"); !strings.HasPrefix(out, "qemu-img version") {
		t.Errorf("qemu-img --version in the image says:\n%s", out)
	}
}

// runInRoot runs name in a chroot of rootfs as uid and gid 65532, with the image's PATH only.
func runInRoot(t *testing.T, rootfs, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Env = "/", []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs, Credential: &syscall.Credential{Uid: nonrootID, Gid: nonrootID}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v in the image as uid %d: %v\n%s", name, args, nonrootID, err, out)
	}
	return string(out)
}

func runJSON(t *testing.T, v any, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func sameFile(t *testing.T, got, want string) {
	t.Helper()
	a, err1 := os.ReadFile(got)
	b, err2 := os.ReadFile(want)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		t.Errorf("%s in the image: %v %v; sha256 %x, want %x (of %s)", got, err1, err2, sha256.Sum256(a), sha256.Sum256(b), want)
	}
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
