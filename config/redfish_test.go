// Package config_test checks the manifests of config/ against a real API server.
package config_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"stargate.io/stargate/internal/app"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/pkg/filenames"
)

const (
	redfishNS = "stargate-system"
	redfishSA = "system:serviceaccount:" + redfishNS + ":stargate-redfish-dc"
)

// TestRedfishManifests applies config/redfish to a real API server (server-side apply, so every
// field is checked against the schema) and asks it what the Pod's ServiceAccount may do: all
// that the generated RBAC (the controllers' markers) grants, and nothing else that matters.
// applyToAPIServer applies objs server-side to a real API server of the test's own.
func applyToAPIServer(t *testing.T, objs []*unstructured.Unstructured) *testenv.Env {
	t.Helper()
	env := testenv.StartFor(t)
	for _, u := range objs {
		if err := env.Client.Apply(context.Background(), client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("config-test"),
			client.ForceOwnership); err != nil {
			t.Fatalf("applying %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	return env
}

func TestRedfishManifests(t *testing.T) {
	objs := kustomizationObjects(t, "redfish")
	checkRulesMatchGenerated(t, objs)
	checkDeployment(t, objs)

	env := applyToAPIServer(t, objs)
	ctx := context.Background()

	type check struct{ ns, group, resource, verb string }
	can := func(c check) bool {
		t.Helper()
		group, sub, _ := strings.Cut(c.resource, "/")
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   redfishSA,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + redfishNS, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: c.ns, Verb: c.verb, Group: c.group,
				Resource: group, Subresource: sub},
		}}
		if err := env.Client.Create(ctx, sar); err != nil {
			t.Fatalf("SubjectAccessReview %+v: %v", c, err)
		}
		return sar.Status.Allowed
	}
	// Everything the markers grant: Nodes cluster-wide, Leases in stargate-system, the rest in a
	// tenant's namespace and across all (the Pod watches every namespace).
	for _, r := range generatedRules(t) {
		for _, g := range r.rule.APIGroups {
			for _, res := range r.rule.Resources {
				for _, v := range r.rule.Verbs {
					namespaces := []string{"rack-1", ""}
					switch {
					case res == "nodes":
						namespaces = []string{""}
					case r.namespace != "":
						namespaces = []string{r.namespace}
					}
					for _, ns := range namespaces {
						if c := (check{ns, g, res, v}); !can(c) {
							t.Errorf("the ServiceAccount may not %s %s (group %q) in namespace %q, which the controllers need", v, res, g, ns)
						}
					}
				}
			}
		}
	}
	for _, c := range []check{
		{"rack-1", "", "secrets", "list"}, {"", "", "secrets", "list"}, {"rack-1", "", "secrets", "watch"},
		{"rack-1", "", "secrets", "create"}, {"rack-1", "", "secrets", "update"}, {"rack-1", "", "secrets", "delete"},
		{"rack-1", "stargate.io", "servers", "create"}, {"rack-1", "stargate.io", "servers", "delete"},
		{"rack-1", "stargate.io", "operations", "create"}, {"rack-1", "stargate.io", "operations", "delete"},
		{"rack-1", "stargate.io", "provisioningprofiles", "update"}, {"rack-1", "stargate.io", "faultinjections", "update"},
		{"", "", "nodes", "create"}, {"", "", "nodes", "update"}, {"", "", "nodes", "patch"},
		{"rack-1", "coordination.k8s.io", "leases", "create"}, {redfishNS, "coordination.k8s.io", "leases", "delete"},
		{"", "coordination.k8s.io", "leases", "list"},
		{"rack-1", "", "events", "create"}, {"rack-1", "", "pods", "create"}, {redfishNS, "", "configmaps", "update"},
		{redfishNS, "", "serviceaccounts/token", "create"}, {redfishNS, "apps", "deployments", "update"},
		{"", "rbac.authorization.k8s.io", "clusterroles", "escalate"}, {"", "rbac.authorization.k8s.io", "clusterrolebindings", "create"},
		{"", "apiextensions.k8s.io", "customresourcedefinitions", "update"},
	} {
		if can(c) {
			t.Errorf("the ServiceAccount may %s %s (group %q) in namespace %q: more than the controllers need", c.verb, c.resource, c.group, c.ns)
		}
	}
}

// kustomizationObjects reads the objects of config/<dir>'s kustomization. It holds only
// `resources` (checked here), so its output is these files' objects as they are.
func kustomizationObjects(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	root := filepath.Join(testenv.RepoRoot(), "config", dir)
	var k map[string]any
	readYAML(t, filepath.Join(root, "kustomization.yaml"), &k)
	var files []string
	for key, v := range k {
		switch key {
		case "apiVersion", "kind":
		case "resources":
			for _, f := range v.([]any) {
				files = append(files, f.(string))
			}
		default:
			t.Fatalf("%s/kustomization.yaml has %q: this test applies the resources as they are, so teach it %q first", dir, key, key)
		}
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		objs = append(objs, fileObjects(t, filepath.Join(root, f))...)
	}
	return objs
}

type namespacedRule struct {
	namespace string // "" for a ClusterRole's
	rule      rbacv1.PolicyRule
}

// generatedRules are the rules of config/rbac/role.yaml, generated from the +kubebuilder:rbac
// markers: what the controllers need.
func generatedRules(t *testing.T) []namespacedRule {
	t.Helper()
	var out []namespacedRule
	for _, u := range fileObjects(t, filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml")) {
		var rules []rbacv1.PolicyRule
		convert(t, u.Object["rules"], &rules)
		for _, r := range rules {
			out = append(out, namespacedRule{u.GetNamespace(), r})
		}
	}
	return out
}

// checkRulesMatchGenerated: config/redfish's roles grant exactly what the generated ones do.
func checkRulesMatchGenerated(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	var got []namespacedRule
	for _, u := range objs {
		if u.GetKind() != "ClusterRole" && u.GetKind() != "Role" {
			continue
		}
		var rules []rbacv1.PolicyRule
		convert(t, u.Object["rules"], &rules)
		for _, r := range rules {
			got = append(got, namespacedRule{u.GetNamespace(), r})
		}
	}
	if g, w := grants(got), grants(generatedRules(t)); !slices.Equal(g, w) {
		t.Errorf("config/redfish's RBAC grants\n%s\nbut config/rbac/role.yaml (make manifests, from the markers) grants\n%s",
			strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
}

// grants flattens rules into sorted "namespace group resource verb" lines.
func grants(rules []namespacedRule) []string {
	var out []string
	for _, r := range rules {
		for _, g := range r.rule.APIGroups {
			for _, res := range r.rule.Resources {
				for _, v := range r.rule.Verbs {
					out = append(out, strings.Join([]string{r.namespace, g, res, v}, " "))
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// checkDeployment: the Deployment's args are flags the binary has, its ports are the ones those
// flags listen on, and its Pod runs locked down with a writable work directory.
func checkDeployment(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	var d appsv1.Deployment
	var svc corev1.Service
	for _, u := range objs {
		switch u.GetKind() {
		case "Deployment":
			convert(t, u.Object, &d)
		case "Service":
			convert(t, u.Object, &svc)
		}
	}
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 || pod.ServiceAccountName != "stargate-redfish-dc" || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Fatalf("want one container run as stargate-redfish-dc, replaced by Recreate: %+v", d.Spec)
	}
	c := pod.Containers[0]
	args := deploymentArgs(t, objs)
	var o app.Options
	fs := flag.NewFlagSet("simulator", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		t.Fatalf("the Deployment's args %q: %v (left %q)", c.Args, err, fs.Args())
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if _, p, _ := net.SplitHostPort(o.InstallerListen); p != "8082" || ports["installer"] != 8082 || svc.Spec.Ports[0].TargetPort.StrVal != "installer" {
		t.Errorf("--installer-listen %s, container ports %v, Service %+v: want 8082 throughout", o.InstallerListen, ports, svc.Spec.Ports)
	}
	if h, p, _ := net.SplitHostPort(o.ProbeAddr); h != "" || p != "8081" || ports["probes"] != 8081 || c.LivenessProbe.HTTPGet.Port.StrVal != "probes" {
		t.Errorf("--health-probe-bind-address %s: the kubelet must reach it on the Pod's address, port probes (8081)", o.ProbeAddr)
	}
	if o.HostID == "" {
		t.Error("no --host-id: the host name is the Pod's, and a new Pod would not own the Servers of the last")
	}
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || sc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("security contexts: pod %+v, container %+v", psc, sc)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	for _, v := range pod.Volumes {
		if v.EmptyDir == nil {
			t.Errorf("volume %s is not an emptyDir", v.Name)
		}
	}
	// The image's entrypoint passes --work-dir=/var/lib/stargate (hack/image).
	if mounts[filenames.DefaultWorkDir] == "" || mounts["/tmp"] == "" {
		t.Errorf("mounts %v: the work directory %s and /tmp must be writable volumes", mounts, filenames.DefaultWorkDir)
	}
}

func fileObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// convert turns decoded YAML (maps and lists) into a typed value, through JSON.
func convert(t *testing.T, in, out any) {
	t.Helper()
	b, err := json.Marshal(in)
	if err == nil {
		err = json.Unmarshal(b, out)
	}
	if err != nil {
		t.Fatalf("converting to %T: %v", out, err)
	}
}
