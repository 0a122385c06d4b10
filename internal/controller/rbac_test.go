package controller_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/hostlease"
	"stargate.io/stargate/internal/testenv"
)

// readManifests decodes the YAML documents of a file into objects of the given kinds.
func readManifests(t *testing.T, path string) []client.Object {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), path))
	if err != nil {
		t.Fatal(err)
	}
	var objs []client.Object
	for _, doc := range strings.Split(string(data), "\n---") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil || meta.Kind == "" {
			continue
		}
		var obj client.Object
		switch meta.Kind {
		case "Role":
			obj = &rbacv1.Role{}
		case "RoleBinding":
			obj = &rbacv1.RoleBinding{}
		case "ClusterRole":
			obj = &rbacv1.ClusterRole{}
		case "ClusterRoleBinding":
			obj = &rbacv1.ClusterRoleBinding{}
		default:
			t.Fatalf("%s: unexpected kind %s", path, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		objs = append(objs, obj)
	}
	return objs
}

// rulesOf flattens RBAC rules into "group/resource:verb" strings.
func rulesOf(rules []rbacv1.PolicyRule) sets.Set[string] {
	out := sets.New[string]()
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out.Insert(g + "/" + res + ":" + v)
				}
			}
		}
	}
	return out
}

// The hand-written namespaced RBAC must grant what the generated ClusterRole grants, no more.
func TestNamespacedRBACMatchesTheGeneratedRole(t *testing.T) {
	cluster, namespaced, nodes := sets.New[string](), sets.New[string](), sets.New[string]()
	for _, o := range readManifests(t, "config/rbac/role.yaml") {
		switch r := o.(type) {
		case *rbacv1.ClusterRole:
			cluster = cluster.Union(rulesOf(r.Rules))
		case *rbacv1.Role: // the host Leases, in stargate-system only
			if r.Namespace != "stargate-system" || !rulesOf(r.Rules).Equal(sets.New("coordination.k8s.io/leases:create",
				"coordination.k8s.io/leases:get", "coordination.k8s.io/leases:list", "coordination.k8s.io/leases:update")) {
				t.Errorf("role.yaml's Role %s/%s grants %v", r.Namespace, r.Name, sets.List(rulesOf(r.Rules)))
			}
			cluster = cluster.Union(rulesOf(r.Rules))
		}
	}
	for _, path := range []string{"config/rbac/namespaced/role.yaml", "config/rbac/namespaced/lease_role.yaml"} {
		for _, o := range readManifests(t, path) {
			if r, ok := o.(*rbacv1.Role); ok {
				namespaced = namespaced.Union(rulesOf(r.Rules))
			}
		}
	}
	for _, o := range readManifests(t, "config/rbac/namespaced/node_clusterrole.yaml") {
		if cr, ok := o.(*rbacv1.ClusterRole); ok {
			nodes = rulesOf(cr.Rules)
		}
	}
	if got := namespaced.Union(nodes); !got.Equal(cluster) {
		t.Errorf("namespaced RBAC differs from the generated ClusterRole:\n missing %v\n extra %v",
			sets.List(cluster.Difference(got)), sets.List(got.Difference(cluster)))
	}
	for r := range nodes {
		if !strings.HasPrefix(r, "/nodes:") {
			t.Errorf("the namespaced variant's ClusterRole grants %s beyond Nodes", r)
		}
	}
}

// A simulator started with --namespace runs on config/rbac/namespaced alone: a whole repave with
// a Secret-backed profile succeeds as its ServiceAccount, which can read no other namespace's Secrets.
func TestNamespacedRBACIsEnoughAndNoMore(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.stop() // restarted below as the ServiceAccount
	if err := env.Client.Create(ctx, testenv.Namespace(hostlease.DefaultNamespace)); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, path := range []string{"config/rbac/namespaced/role.yaml", "config/rbac/namespaced/role_binding.yaml",
		"config/rbac/namespaced/node_clusterrole.yaml", "config/rbac/namespaced/lease_role.yaml"} {
		for _, o := range readManifests(t, path) {
			switch obj := o.(type) {
			case *rbacv1.Role:
				if obj.Namespace != hostlease.DefaultNamespace {
					obj.Namespace = h.ns
				}
			case *rbacv1.RoleBinding:
				if obj.Namespace != hostlease.DefaultNamespace {
					obj.Namespace = h.ns
				} else {
					obj.Name += "-" + h.ns
				}
				obj.Subjects[0].Namespace = h.ns
			case *rbacv1.ClusterRoleBinding:
				obj.Name += "-" + h.ns
				obj.Subjects[0].Namespace = h.ns
			}
			if err := env.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("applying %s: %v", path, err)
			}
		}
	}
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "stargate-simulator", Namespace: h.ns}}); err != nil {
		t.Fatal(err)
	}
	h.cfg = rest.CopyConfig(env.Config)
	h.cfg.Impersonate = rest.ImpersonationConfig{UserName: fmt.Sprintf("system:serviceaccount:%s:stargate-simulator", h.ns)}
	as, err := client.New(h.cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	// Host liveness as the ServiceAccount: its Lease, and the observer's election and lists.
	hostID := "rbac-" + h.ns
	lease, err := hostlease.Acquire(ctx, hostlease.Config{Client: as, HostID: hostID})
	if err != nil {
		t.Fatalf("taking the host Lease as the ServiceAccount: %v", err)
	}
	if err := lease.Renew(ctx); err != nil {
		t.Fatalf("renewing the host Lease as the ServiceAccount: %v", err)
	}
	h.opts.HostID = hostID
	h.opts.Liveness = &controller.Liveness{Identity: lease.Holder(), Scope: h.ns, Interval: 100 * time.Millisecond}
	h.start(h.provider())
	eventually(t, 20*time.Second, func() (bool, string) {
		var el coordinationv1.Lease
		err := as.Get(ctx, client.ObjectKey{Namespace: hostlease.DefaultNamespace, Name: "stargate-host-observer-" + h.ns}, &el)
		return err == nil && ptr.Deref(el.Spec.HolderIdentity, "") == lease.Holder(), fmt.Sprintf("observer election lease: %v", err)
	})

	h.create(server("s1"))
	h.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ud"}, Type: stargatev1.UserDataSecretType,
		Data: map[string][]byte{"user-data": []byte(okUserData)}})
	p := profile("p", "")
	p.Spec.CloudInitSecretRef = &stargatev1.SecretKeyReference{Name: "ud"}
	h.create(p)
	h.create(repave("op1", "s1", "p"))
	h.waitPhase("op1", stargatev1.OperationSucceeded, 30*time.Second)
	h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool { return st.State == stargatev1.ServerReady })

	err = as.Get(ctx, client.ObjectKey{Namespace: "kube-system", Name: "anything"}, &corev1.Secret{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("the namespaced simulator reading a Secret of kube-system: %v, want Forbidden", err)
	}
}
