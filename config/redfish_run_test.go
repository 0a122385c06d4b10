package config_test

import (
	"context"
	"flag"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"stargate.io/stargate/internal/app"
	"stargate.io/stargate/internal/hostlease"
	"stargate.io/stargate/internal/testreq"
)

// TestRedfishRunsAsItsServiceAccount runs the controller with the Deployment's flags, as the
// ServiceAccount of config/redfish (impersonated), until its caches are synced and it holds its
// host Lease: the API server never answers it 403. The SubjectAccessReviews of
// TestRedfishManifests say what is granted; this says that it is enough to start.
func TestRedfishRunsAsItsServiceAccount(t *testing.T) {
	iso := os.Getenv("STARGATE_INSTALLER_ISO")
	if iso == "" {
		testreq.Need(t, "STARGATE_INSTALLER_ISO (the installer ISO)", "run `make test`, which builds it, or set it to what `make installer-iso` prints")
	}
	objs := kustomizationObjects(t, "redfish")
	env := applyToAPIServer(t, objs)
	ctx := context.Background()

	// The image's entrypoint flags, the Deployment's args, then what a test process needs instead
	// of the Pod's ports.
	args := []string{"--provider=redfish", "--installer-iso=" + iso, "--work-dir=" + t.TempDir()}
	args = append(args, deploymentArgs(t, objs)...)
	args = append(args, "--installer-listen=127.0.0.1:0", "--health-probe-bind-address=0", "--metrics-bind-address=0")
	var o app.Options
	fs := flag.NewFlagSet("simulator", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}

	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: redfishSA,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + redfishNS, "system:authenticated"}}
	var mu sync.Mutex
	var denied []string
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if err == nil && resp.StatusCode == http.StatusForbidden {
				mu.Lock()
				denied = append(denied, r.Method+" "+r.URL.Path)
				mu.Unlock()
			}
			return resp, err
		})
	})

	ctrl.SetLogger(logr.Discard())
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- app.Run(runCtx, cfg, o) }()
	lease := &coordinationv1.Lease{}
	deadline := time.Now().Add(30 * time.Second)
	for env.Client.Get(ctx, client.ObjectKey{Namespace: redfishNS, Name: hostlease.LeaseName(o.HostID)}, lease) != nil {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no host Lease in %s after 30 s; run: %v", redfishNS, <-done)
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("the controller stopped: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	time.Sleep(5 * time.Second) // the manager starts after the Lease: its caches list and watch
	cancel()
	if err := <-done; err != nil {
		t.Errorf("the controller as %s: %v", redfishSA, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(denied) > 0 {
		slices.Sort(denied)
		t.Errorf("the API server refused the ServiceAccount:\n%s", strings.Join(slices.Compact(denied), "\n"))
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// deploymentArgs are the Deployment's container args with sample values for its variables.
func deploymentArgs(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() != "Deployment" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
		c, _ := containers[0].(map[string]any)
		raw, _, _ := unstructured.NestedStringSlice(c, "args")
		out := make([]string, len(raw))
		r := strings.NewReplacer("$(INSTALLER_URL)", "http://192.0.2.1:30082", "$(BMC_NETWORKS)", "192.0.2.0/24")
		for i, a := range raw {
			out[i] = r.Replace(a)
		}
		return out
	}
	t.Fatal("no Deployment in config/redfish")
	return nil
}
