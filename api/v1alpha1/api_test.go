package v1alpha1_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, &env))
}

func newNamespace(t *testing.T) string {
	t.Helper()
	name := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	name = strings.ReplaceAll(name, "_", "-")
	if len(name) > 50 {
		name = name[:50]
	}
	name = strings.TrimRight(name, "-") + fmt.Sprintf("-%d", time.Now().UnixNano()%100000)
	if err := env.Client.Create(context.Background(), testenv.Namespace(name)); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return name
}

// readObjects decodes every YAML document in a file.
func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

func TestCRDsInstallWithStatusAndPrinterColumns(t *testing.T) {
	for _, plural := range []string{"servers", "provisioningprofiles", "operations", "faultinjections"} {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: plural + ".stargate.io"}, crd); err != nil {
			t.Fatalf("CRD %s not installed: %v", plural, err)
		}
		if crd.Spec.Scope != apiextensionsv1.NamespaceScoped {
			t.Errorf("%s: scope %s, want Namespaced", plural, crd.Spec.Scope)
		}
		v := crd.Spec.Versions[0]
		if v.Subresources == nil || v.Subresources.Status == nil {
			t.Errorf("%s: no status subresource", plural)
		}
		if len(crd.Spec.Names.ShortNames) == 0 {
			t.Errorf("%s: no short names", plural)
		}
		if len(v.AdditionalPrinterColumns) < 3 {
			t.Errorf("%s: only %d printer columns", plural, len(v.AdditionalPrinterColumns))
		}
		assertDescribed(t, plural, "", v.Schema.OpenAPIV3Schema.Properties["spec"])
	}
}

// assertDescribed checks that every field has a description, so `kubectl explain` teaches the API.
func assertDescribed(t *testing.T, crd, path string, s apiextensionsv1.JSONSchemaProps) {
	t.Helper()
	for name, p := range s.Properties {
		if p.Description == "" {
			t.Errorf("%s: field %s.%s has no description", crd, path, name)
		}
		assertDescribed(t, crd, path+"."+name, p)
	}
}

func TestSamplesAreAccepted(t *testing.T) {
	ns := newNamespace(t)
	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "samples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples found: %v", err)
	}
	for _, f := range files {
		for _, obj := range readObjects(t, f) {
			if obj.GetKind() == "Namespace" {
				continue
			}
			obj.SetNamespace(ns)
			if err := env.Client.Create(context.Background(), obj); err != nil {
				t.Errorf("%s: %s %s rejected: %v", filepath.Base(f), obj.GetKind(), obj.GetName(), err)
			}
		}
	}
}

func TestDefaults(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	srv := &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: "s1", Namespace: ns}}
	if err := env.Client.Create(ctx, srv); err != nil {
		t.Fatal(err)
	}
	// The API server's defaults (markers) and the Go constants the controllers use must agree.
	if srv.Spec.CPUs != stargatev1.DefaultCPUs || srv.Spec.Memory.String() != stargatev1.DefaultMemory || srv.Spec.Disk.String() != stargatev1.DefaultDisk {
		t.Errorf("server defaults: cpus=%d memory=%s disk=%s, want %d, %s, %s", srv.Spec.CPUs, srv.Spec.Memory.String(), srv.Spec.Disk.String(),
			stargatev1.DefaultCPUs, stargatev1.DefaultMemory, stargatev1.DefaultDisk)
	}
	var unset stargatev1.ServerSpec
	if unset.CPUCount() != int(srv.Spec.CPUs) || unset.MemoryBytes() != srv.Spec.Memory.Value() || unset.DiskBytes() != srv.Spec.Disk.Value() {
		t.Errorf("accessors of an unset spec (%d, %d, %d) differ from the API server's defaults", unset.CPUCount(), unset.MemoryBytes(), unset.DiskBytes())
	}
	pp := &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "p1", Namespace: ns},
		Spec: stargatev1.ProvisioningProfileSpec{CloudInit: "#cloud-config\n{}\n"}}
	if err := env.Client.Create(ctx, pp); err != nil {
		t.Fatal(err)
	}
	if pp.Spec.Image.URL != stargatev1.DefaultImageURL {
		t.Errorf("profile image default %q, want %q", pp.Spec.Image.URL, stargatev1.DefaultImageURL)
	}
	op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: "o1", Namespace: ns}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: "s1"},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "p1"}}}
	if err := env.Client.Create(ctx, op); err != nil {
		t.Fatal(err)
	}
	if want, _ := time.ParseDuration(stargatev1.DefaultOperationTimeout); op.Spec.Timeout == nil || op.Spec.Timeout.Duration != want || want != 30*time.Minute {
		t.Errorf("operation timeout default %v, want %s (30m)", op.Spec.Timeout, stargatev1.DefaultOperationTimeout)
	}
}

func validServer(name string) *stargatev1.Server {
	return &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func validProfile() *stargatev1.ProvisioningProfile {
	return &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec: stargatev1.ProvisioningProfileSpec{CloudInit: "#cloud-config\n{}\n"}}
}

func validOperation() *stargatev1.Operation {
	return &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: "o"}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: "s"},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "p"}}}
}

// TestInvalidObjectsAreRejected creates objects the API must refuse, and checks that the error
// tells the user what to fix.
func TestInvalidObjectsAreRejected(t *testing.T) {
	ns := newNamespace(t)
	cases := []struct {
		name    string
		obj     func() client.Object
		wantMsg string
	}{
		{"unknown operation", func() client.Object {
			o := validOperation()
			o.Spec.Operation = "explode"
			return o
		}, `supported values: "repave"`},
		{"missing server reference", func() client.Object {
			o := validOperation()
			o.Spec.ServerRef.Name = ""
			return o
		}, "spec.serverRef.name"},
		{"repave without profile", func() client.Object {
			o := validOperation()
			o.Spec.ProvisioningProfileRef = nil
			return o
		}, "a repave needs spec.provisioningProfileRef"},
		{"evacuate with a profile", func() client.Object {
			o := validOperation()
			o.Spec.Operation = stargatev1.OperationEvacuate
			return o
		}, "only a repave takes spec.provisioningProfileRef"},
		{"evacuate without a server", func() client.Object {
			o := validOperation()
			o.Spec.Operation, o.Spec.ProvisioningProfileRef, o.Spec.ServerRef.Name = stargatev1.OperationEvacuate, nil, ""
			return o
		}, "spec.serverRef.name"},
		{"evacuate with a grace period", func() client.Object {
			o := validOperation()
			o.Spec.Operation, o.Spec.ProvisioningProfileRef = stargatev1.OperationEvacuate, nil
			o.Spec.GracePeriod = &metav1.Duration{Duration: time.Second}
			return o
		}, "spec.gracePeriod applies to powerOff and reboot only"},
		{"timeout too short", func() client.Object {
			o := validOperation()
			o.Spec.Timeout = &metav1.Duration{Duration: time.Second}
			return o
		}, "spec.timeout must be at least 10s"},
		{"malformed checksum", func() client.Object {
			p := validProfile()
			p.Spec.Image.Checksum = "md5:d41d8cd98f00b204e9800998ecf8427e"
			return p
		}, "spec.image.checksum"},
		{"unsupported image URL scheme", func() client.Object {
			p := validProfile()
			p.Spec.Image.URL = "ftp://example.invalid/image.img"
			return p
		}, "image.url must be an http://, https:// or file:/// URL"},
		{"image URL without a host", func() client.Object {
			p := validProfile()
			p.Spec.Image.URL = "http://"
			return p
		}, "image.url must be a URL that names a host"},
		{"https image URL with only a port", func() client.Object {
			p := validProfile()
			p.Spec.Image.URL = "https://:8443/os.qcow2"
			return p
		}, "image.url must be a URL that names a host"},
		{"image URL with an empty host and a path", func() client.Object {
			p := validProfile()
			p.Spec.Image.URL = "http:///os.qcow2"
			return p
		}, "image.url must be a URL that names a host"},
		{"empty cloud-init", func() client.Object {
			p := validProfile()
			p.Spec.CloudInit = ""
			return p
		}, "spec.cloudInit"},
		{"user-data both inline and in a Secret", func() client.Object {
			p := validProfile()
			p.Spec.CloudInitSecretRef = &stargatev1.SecretKeyReference{Name: "ud"}
			return p
		}, "set exactly one of spec.cloudInit"},
		{"zero CPUs", func() client.Object {
			s := validServer("zero-cpus")
			s.Spec.CPUs = -1
			return s
		}, "spec.cpus"},
		{"too little memory", func() client.Object {
			s := validServer("small")
			m := resource.MustParse("100Mi")
			s.Spec.Memory = &m
			return s
		}, "spec.memory must be at least 512Mi"},
		{"tiny disk", func() client.Object {
			s := validServer("tiny")
			d := resource.MustParse("10Mi")
			s.Spec.Disk = &d
			return s
		}, "spec.disk must be at least 1Gi"},
		{"malformed MAC", func() client.Object {
			s := validServer("badmac")
			s.Spec.MACAddress = "52:54:00:ZZ:00:01"
			return s
		}, "spec.macAddress"},
		{"multicast MAC", func() client.Object {
			s := validServer("mcastmac")
			s.Spec.MACAddress = "01:00:5e:00:00:01"
			return s
		}, "spec.macAddress must be a unicast address"},
		{"broadcast MAC", func() client.Object {
			s := validServer("bcastmac")
			s.Spec.MACAddress = "ff:ff:ff:ff:ff:ff"
			return s
		}, "spec.macAddress must be a unicast address"},
		{"server name longer than a DNS label", func() client.Object {
			return validServer(strings.Repeat("a", 64))
		}, "must be a DNS label"},
		{"server name with a dot", func() client.Object {
			return validServer("rack1.server1")
		}, "must be a DNS label"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			obj := tc.obj()
			obj.SetNamespace(ns)
			err := env.Client.Create(context.Background(), obj)
			if err == nil {
				t.Fatalf("accepted, want rejection mentioning %q", tc.wantMsg)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("error %v is not an Invalid error", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
		})
	}
}

// The image URL rules refuse what cannot be fetched, not the URLs a host can be told to allow:
// a file URL names no host, only a path.
func TestImageURLsAreAccepted(t *testing.T) {
	ns := newNamespace(t)
	for i, url := range []string{
		"file:///var/lib/stargate-images/debian-12.qcow2",
		"http://192.168.100.1:8080/debian-12.qcow2",
		"https://[2001:db8::1]/os.img",
		"https://images.example/os.qcow2?version=2",
	} {
		p := validProfile()
		p.Name, p.Namespace = fmt.Sprintf("p%d", i), ns
		p.Spec.Image.URL = url
		if err := env.Client.Create(context.Background(), p); err != nil {
			t.Errorf("image.url %s rejected: %v", url, err)
		}
	}
}

func TestServerNameOf63CharactersIsAccepted(t *testing.T) {
	ns := newNamespace(t)
	s := validServer(strings.Repeat("a", 63))
	s.Namespace = ns
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatalf("63-character name rejected: %v", err)
	}
}

func TestOperationSpecIsImmutable(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	op := validOperation()
	op.Namespace = ns
	if err := env.Client.Create(ctx, op); err != nil {
		t.Fatal(err)
	}
	op.Spec.ServerRef.Name = "another-server"
	err := env.Client.Update(ctx, op)
	if err == nil || !strings.Contains(err.Error(), "an Operation's spec is immutable") {
		t.Fatalf("editing spec: got %v, want an immutability error", err)
	}
	// Labels and annotations stay editable, and so does status.
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(op), op); err != nil {
		t.Fatal(err)
	}
	op.Labels = map[string]string{"team": "infra"}
	if err := env.Client.Update(ctx, op); err != nil {
		t.Fatalf("editing labels: %v", err)
	}
	op.Status.Phase = stargatev1.OperationPending
	if err := env.Client.Status().Update(ctx, op); err != nil {
		t.Fatalf("updating status: %v", err)
	}
}

func TestStatusEnumsAreValidated(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	s := validServer("s")
	s.Namespace = ns
	if err := env.Client.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	s.Status.State = "Exploded"
	if err := env.Client.Status().Update(ctx, s); err == nil || !strings.Contains(err.Error(), "status.state") {
		t.Fatalf("invalid state: got %v, want rejection naming status.state", err)
	}
}
