package redfishdc_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/redfishdc"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/pkg/imagecache"
)

// The URLs of a repave replaced by the next one, or failed, answer 410, unknown ones 404, and only
// the methods each URL takes are allowed.
func TestURLsOfAReplacedRepaveAreGone(t *testing.T) {
	dir := t.TempDir()
	srv := &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s1"}, Spec: stargatev1.ServerSpec{
		BMC:     &stargatev1.BMCSpec{CredentialsSecretRef: stargatev1.LocalSecretReference{Name: "bmc"}, Address: "http://10.0.0.50"},
		Network: &stargatev1.StaticNetwork{MACAddress: "52:54:00:00:00:0a", Address: "10.0.1.11/24"}}}
	c := fake.NewClientBuilder().WithScheme(testenv.Scheme()).WithObjects(srv).Build()
	p, err := redfishdc.New(redfishdc.Config{Reader: c, SecretReader: c, Images: &imagecache.Cache{Dir: filepath.Join(dir, "cache")},
		RawDir: filepath.Join(dir, "raw"), InstallerISO: fakeInstallerISO(t, dir), PublicURL: "http://10.0.0.1:8082",
		BMCNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	key := types.NamespacedName{Namespace: "ns", Name: "s1"}
	// The image is refused (no file URLs allowed): the repave fails at ImageReady, its routes stay.
	req := controller.RepaveRequest{Server: key, InstanceID: "i-1", ImageURL: "file:///nowhere/os.qcow2"}
	if _, err := p.Repave(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	first := routeOf(t, p, "i-1")
	req.InstanceID = "i-2"
	if _, err := p.Repave(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	second := routeOf(t, p, "i-2")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		st, err := p.Repave(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if st.Failed {
			if st.Reason != "ImageFetchFailed" {
				t.Errorf("the second repave failed with %s: %s", st.Reason, st.Message)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second repave did not fail: %+v", st)
		}
	}
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, first + "/report", http.StatusGone},
		{http.MethodGet, first + "/installer.iso", http.StatusGone},
		{http.MethodGet, "/i/" + "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz/installer.iso", http.StatusNotFound},
		{http.MethodGet, "/i/../../etc/passwd", http.StatusNotFound},
		{http.MethodPut, second + "/installer.iso", http.StatusMethodNotAllowed},
		{http.MethodGet, second + "/report", http.StatusMethodNotAllowed},
		{http.MethodPost, second + "/report", http.StatusGone}, // it failed: the image is refused
		{http.MethodGet, second + "/other", http.StatusNotFound},
	} {
		w := httptest.NewRecorder()
		p.ServeHTTP(w, httptest.NewRequest(tc.method, tc.path, nil))
		if w.Code != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, w.Code, tc.want)
		}
	}
}

// routeOf is the path under which a repave's URLs are served.
func routeOf(t *testing.T, p *redfishdc.Provider, instanceID string) string {
	t.Helper()
	u := p.InstallerURL(instanceID)
	m := regexp.MustCompile(`^http://10\.0\.0\.1:8082(/i/[a-z2-7]{52})/installer\.iso$`).FindStringSubmatch(u)
	if m == nil {
		t.Fatalf("installer URL %q", u)
	}
	return m[1]
}
