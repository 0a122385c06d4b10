// Package scripts tests the demo scripts. kind and Docker cannot run on the build machines, so
// the tests put shims of kind and docker on PATH that record their arguments and answer as the
// real tools do, and check the script's decisions and outputs — including that the manifests it
// writes are accepted by a real kube-apiserver with the Stargate CRDs.
package scripts_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/testenv"
)

const (
	fakeToken = "abcdef.0123456789abcdef"
	fakeHash  = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	hostIP    = "10.20.30.40"
)

// shims writes fake kind, docker and host tools into a directory and returns it. State lives in
// files next to them: whether the cluster exists, and a log of every call.
func shims(t *testing.T) (dir string) {
	t.Helper()
	dir = t.TempDir()
	write := func(name, body string) {
		script := "#!/usr/bin/env bash\nset -eu\nS=" + dir + "\necho \"" + name + " $*\" >> $S/calls.log\n" + body
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("kind", `case "$1 $2" in
"get clusters") [ -f $S/cluster ] && cat $S/cluster; exit 0 ;;
"create cluster") cp "$6" $S/kind-config.yaml; echo "$4" > $S/cluster ;;
"delete cluster") rm -f $S/cluster ;;
"get kubeconfig") printf 'apiVersion: v1\nkind: Config\nclusters: [{name: kind, cluster: {server: "https://`+hostIP+`:6443"}}]\n' ;;
*) echo "kind shim: unexpected $*" >&2; exit 1 ;;
esac
`)
	write("docker", `case "$1" in
info) exit 0 ;;
port) echo "`+hostIP+`:6443" ;;
exec) shift 2
  case "$*" in
  "kubeadm token create --ttl 24h --print-join-command")
    echo "kubeadm join stargate-control-plane:6443 --token `+fakeToken+` --discovery-token-ca-cert-hash `+fakeHash+` " ;;
  "kubeadm version -o short") echo v1.31.4 ;;
  *) echo "docker shim: unexpected exec $*" >&2; exit 1 ;;
  esac ;;
*) echo "docker shim: unexpected $*" >&2; exit 1 ;;
esac
`)
	for _, tool := range []string{"kubectl", "qemu-system-x86_64", "qemu-img", "iptables"} {
		write(tool, "exit 0\n")
	}
	return dir
}

func runSetup(t *testing.T, shimDir, outDir string, path string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(testenv.RepoRoot(), "scripts", "setup-demo.sh")}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+path, "OUT_DIR="+outDir, "HOST_IP="+hostIP, "SUDO_UID=", "SUDO_GID=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestSetupDemoWithKindShims(t *testing.T) {
	shimDir := shims(t)
	out := filepath.Join(t.TempDir(), "demo")
	path := shimDir + ":" + os.Getenv("PATH")
	if log, err := runSetup(t, shimDir, out, path); err != nil {
		t.Fatalf("setup-demo.sh: %v\n%s", err, log)
	}

	// The kind cluster's API server is on the host IP, where VMs on the bridge reach it.
	kindCfg := readFile(t, filepath.Join(shimDir, "kind-config.yaml"))
	var cfg struct {
		Networking struct {
			APIServerAddress string `json:"apiServerAddress"`
			APIServerPort    int    `json:"apiServerPort"`
		} `json:"networking"`
	}
	if err := yaml.Unmarshal([]byte(kindCfg), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Networking.APIServerAddress != hostIP || cfg.Networking.APIServerPort != 6443 {
		t.Errorf("kind config puts the API server on %s:%d, want %s:6443:\n%s", cfg.Networking.APIServerAddress, cfg.Networking.APIServerPort, hostIP, kindCfg)
	}
	if calls := readFile(t, filepath.Join(shimDir, "calls.log")); !strings.Contains(calls, "kind create cluster --name stargate --config") {
		t.Errorf("kind create not called as expected:\n%s", calls)
	}

	// The join command lands in the profile, pointing at the host IP.
	profileText := readFile(t, filepath.Join(out, "provisioningprofile-k8s-worker.yaml"))
	for _, want := range []string{"'" + hostIP + ":6443'", "'" + fakeToken + "'", "'" + fakeHash + "'", "v1.31/deb", hostIP + " stargate-control-plane"} {
		if !strings.Contains(profileText, want) {
			t.Errorf("profile lacks %q", want)
		}
	}
	if strings.Contains(profileText, "__") {
		t.Errorf("profile still has placeholders:\n%s", profileText)
	}
	if st, _ := os.Stat(filepath.Join(out, "provisioningprofile-k8s-worker.yaml")); st.Mode().Perm() != 0o600 {
		t.Errorf("profile (it carries the join token) has mode %v, want 0600", st.Mode().Perm())
	}
	if join := readFile(t, filepath.Join(out, "join-command")); !strings.HasPrefix(join, "kubeadm join "+hostIP+":6443 --token "+fakeToken) {
		t.Errorf("join-command %q", join)
	}
	assertWorkerProfile(t, filepath.Join(out, "provisioningprofile-k8s-worker.yaml"))

	// The manifests are accepted by a real API server with the CRDs.
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the apiserver: %v", err)
		}
	}()
	for _, f := range []string{"namespace.yaml", "server.yaml", "provisioningprofile-k8s-worker.yaml", "operation.yaml"} {
		for _, obj := range readObjects(t, filepath.Join(out, f)) {
			if err := env.Client.Create(context.Background(), obj); err != nil {
				t.Errorf("%s: %s %s rejected: %v", f, obj.GetKind(), obj.GetName(), err)
			}
		}
	}

	// Running it again reuses the cluster and makes a new Operation.
	firstOp := readFile(t, filepath.Join(out, "operation.yaml"))
	if log, err := runSetup(t, shimDir, out, path); err != nil {
		t.Fatalf("second run: %v\n%s", err, log)
	} else if !strings.Contains(log, "reusing kind cluster stargate") {
		t.Errorf("second run did not reuse the cluster:\n%s", log)
	}
	if n := strings.Count(readFile(t, filepath.Join(shimDir, "calls.log")), "kind create cluster"); n != 1 {
		t.Errorf("kind create cluster called %d times over two runs, want 1", n)
	}
	_ = firstOp // the name carries a timestamp with one-second resolution; uniqueness is by design
}

func TestSetupDemoNamesMissingPrerequisites(t *testing.T) {
	shimDir := shims(t)
	if err := os.Remove(filepath.Join(shimDir, "kind")); err != nil {
		t.Fatal(err)
	}
	// PATH without the real kind/docker locations: only the shims and core utilities.
	log, err := runSetup(t, shimDir, t.TempDir(), shimDir+":/usr/bin:/bin:/usr/sbin:/sbin")
	if err == nil {
		t.Fatalf("succeeded without kind:\n%s", log)
	}
	if !strings.Contains(log, "missing prerequisites") || !strings.Contains(log, "kind: go install sigs.k8s.io/kind") {
		t.Errorf("message does not say what is missing and how to install it:\n%s", log)
	}
}

func TestWorkerProfileSample(t *testing.T) {
	assertWorkerProfile(t, filepath.Join(testenv.RepoRoot(), "config", "samples", "provisioningprofile-k8s-worker.yaml"))
}

// assertWorkerProfile parses the profile and its cloud-config and checks every step the brief
// asks of a Kubernetes worker.
func assertWorkerProfile(t *testing.T, path string) {
	t.Helper()
	var p stargatev1.ProvisioningProfile
	if err := yaml.UnmarshalStrict([]byte(readFile(t, path)), &p); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !p.Spec.JoinsCluster {
		t.Error("joinsCluster is not set: the repave would succeed before the node joined")
	}
	if p.Spec.Installation == nil {
		t.Fatal("no spec.installation: every repave would install the packages again instead of booting a golden image")
	}
	install, join := p.Spec.Installation.CloudInit, p.Spec.CloudInit
	for name, doc := range map[string]string{"installation.cloudInit": install, "cloudInit": join} {
		if !strings.HasPrefix(doc, "#cloud-config\n") {
			t.Fatalf("%s is not a #cloud-config document", name)
		}
		var cc map[string]any
		if err := yaml.Unmarshal([]byte(doc), &cc); err != nil {
			t.Fatalf("%s is not valid YAML: %v", name, err)
		}
		if name == "installation.cloudInit" && cc["package_update"] != true {
			t.Error("packages are not updated (package_update)")
		}
	}
	// The installation is shared by every worker (and cached on the host): nothing per server or secret.
	for _, secret := range []string{"__TOKEN__", "__CA_CERT_HASH__", "kubeadm, join"} {
		if strings.Contains(install, secret) {
			t.Errorf("the installation holds %q: it belongs in the per-instance cloudInit", secret)
		}
	}
	for step, c := range map[string]struct{ in, want string }{
		"installs containerd":              {install, "- containerd"},
		"systemd cgroup driver":            {install, "SystemdCgroup = true"},
		"installs kubelet/kubeadm/kubectl": {install, "install, -y, kubelet, kubeadm, kubectl"},
		"persists the modules":             {install, "/etc/modules-load.d/"},
		"sets the sysctls":                 {install, "net.bridge.bridge-nf-call-iptables = 1"},
		"loads overlay":                    {join, "[modprobe, overlay]"},
		"loads br_netfilter":               {join, "[modprobe, br_netfilter]"},
		"disables swap":                    {join, "[swapoff, -a]"},
		"joins the cluster":                {join, "[kubeadm, join,"},
	} {
		if !strings.Contains(c.in, c.want) {
			t.Errorf("the worker profile does not %s (no %q)", step, c.want)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader([]byte(readFile(t, path))), 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if err.Error() == "EOF" {
				return objs
			}
			t.Fatalf("%s: %v", path, fmt.Errorf("decoding: %w", err))
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}
