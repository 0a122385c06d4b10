// Package testenv starts a real kube-apiserver and etcd (controller-runtime envtest) with the
// Stargate CRDs installed, for tests. The binaries come from KUBEBUILDER_ASSETS, which `make test`
// sets to binaries it built from the Go module proxy.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/testreq"
)

// Env is a running apiserver with the Stargate CRDs.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *k8sruntime.Scheme
	env    *envtest.Environment
	// unguard ends the watchdog that stops etcd and kube-apiserver if this process dies first.
	unguard func()
}

// RepoRoot is the root of the checkout, found from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Scheme returns a scheme with the built-in kinds and the Stargate kinds.
func Scheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = apiextensionsv1.AddToScheme(s)
	_ = stargatev1.AddToScheme(s)
	return s
}

// Start starts etcd and kube-apiserver and installs the CRDs from config/crd/bases.
func Start() (*Env, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is not set: run the tests with `make test`, which builds etcd and kube-apiserver, " +
			"or point it at a directory holding both")
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	// Inside a test network namespace there is no default route, from which kube-apiserver would
	// otherwise guess the address to advertise.
	// Loopback is refused while the endpoint reconciler runs; tests need no kubernetes Endpoints.
	args := env.ControlPlane.GetAPIServer().Configure()
	args.Set("advertise-address", "127.0.0.1")
	args.Set("endpoint-reconciler-type", "none")
	// /debug/pprof: the fleet benchmark profiles the API server, often what bounds a fleet here.
	args.Set("profiling", "true")
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting envtest (etcd + kube-apiserver from %s): %w", os.Getenv("KUBEBUILDER_ASSETS"), err)
	}
	unguard, err := killWithParent()
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	s := Scheme()
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		unguard()
		_ = env.Stop()
		return nil, fmt.Errorf("creating client: %w", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: s, env: env, unguard: unguard}, nil
}

// WriteKubeconfig writes a kubeconfig for the apiserver, for the processes a test starts (a
// simulator binary). server overrides the address (a relay in another network namespace); the
// certificate is then checked against the name the apiserver's certificate holds.
func (e *Env) WriteKubeconfig(path, server string) error {
	cfg := e.Config
	cluster := &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	if server != "" {
		cluster.Server, cluster.TLSServerName = server, "localhost"
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = cluster
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

// Stop stops the apiserver and etcd.
func (e *Env) Stop() error {
	e.unguard()
	return e.env.Stop()
}

// NeedAssets stops t (skip on a workstation, failure in CI) unless KUBEBUILDER_ASSETS names the
// etcd and kube-apiserver binaries.
func NeedAssets(t testing.TB) {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		testreq.Need(t, "KUBEBUILDER_ASSETS (etcd and kube-apiserver for envtest)",
			"run `make test`, which builds them, or point KUBEBUILDER_ASSETS at a directory holding both")
	}
}

// StartFor starts an Env of t's own (after NeedAssets), stopped when t ends.
func StartFor(t testing.TB) *Env {
	t.Helper()
	NeedAssets(t)
	e, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	return e
}

// Namespace returns a namespace object, for tests that create their own.
func Namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

// Main starts an Env for a test package, runs its tests, stops the Env and returns the exit
// code: `func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }`.
func Main(m *testing.M, env **Env) int {
	e, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*env = e
	defer func() {
		if err := e.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}()
	return m.Run()
}
