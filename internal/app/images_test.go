package app

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"stargate.io/stargate/internal/simulator"
)

func parseOptions(t *testing.T, args ...string) Options {
	t.Helper()
	var o Options
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return o
}

// TestImagePolicyFlags: the defaults refuse file URLs and private addresses; --image-dir and
// --allow-image-hosts repeat and take lists.
func TestImagePolicyFlags(t *testing.T) {
	pol, err := imagePolicy(parseOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(pol.FileDirs) != 0 || len(pol.AllowHosts) != 0 || pol.MaxBytes != 20<<30 || pol.StallTimeout != time.Minute ||
		pol.IdleTimeout < simulator.DefaultImageIdleTimeout {
		t.Errorf("default policy %+v", pol)
	}

	a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
	o := parseOptions(t, "--image-dir", a+","+b, "--image-dir", c+"/", "--allow-image-hosts", "192.168.100.1, 10.0.0.0/8",
		"--allow-image-hosts", "::1", "--max-image-size", "1Gi", "--image-stall-timeout", "5s", "--poll-interval", "30s")
	pol, err = imagePolicy(o)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{a, b, filepath.Clean(c)}; !slices.Equal(pol.FileDirs, want) {
		t.Errorf("FileDirs %v, want %v", pol.FileDirs, want)
	}
	want := []netip.Prefix{netip.MustParsePrefix("192.168.100.1/32"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	if !slices.Equal(pol.AllowHosts, want) {
		t.Errorf("AllowHosts %v, want %v", pol.AllowHosts, want)
	}
	if pol.MaxBytes != 1<<30 || pol.StallTimeout != 5*time.Second || pol.IdleTimeout != 10*time.Minute {
		t.Errorf("policy %+v", pol)
	}
}

func TestImagePolicyFlagsRejected(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--image-dir", "/"}, "/etc/shadow"},
		{[]string{"--image-dir", "images"}, "absolute"},
		{[]string{"--image-dir", "/nonexistent/stargate-images"}, "not a directory"},
		{[]string{"--allow-image-hosts", "metadata.internal"}, "--allow-image-hosts"},
		{[]string{"--max-image-size", "huge"}, "--max-image-size"},
		{[]string{"--image-stall-timeout", "-1s"}, "--image-stall-timeout"},
	} {
		_, err := imagePolicy(parseOptions(t, tc.args...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

// TestImageCacheSizeFlag: --image-cache-size takes a Kubernetes quantity, 0 for no limit; not
// given, it is a quarter of the work directory's file system (one that does not exist yet: its
// nearest existing parent's), and says so; a negative or unreadable one is refused, naming the flag.
func TestImageCacheSizeFlag(t *testing.T) {
	work := filepath.Join(t.TempDir(), "not", "yet")
	for arg, want := range map[string]int64{"0": 0, "20Gi": 20 << 30, "500M": 500e6, "1Ti": 1 << 40} {
		if got, _, err := imageCacheSize(parseOptions(t, "--image-cache-size", arg), work); err != nil || got != want {
			t.Errorf("--image-cache-size %q = %d, %v; want %d", arg, got, err, want)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(os.TempDir(), &st); err != nil {
		t.Fatal(err)
	}
	got, why, err := imageCacheSize(parseOptions(t), work)
	if want := int64(st.Blocks) * st.Bsize / 4; err != nil || got != want || !strings.Contains(why, "25% of the work directory's file system") {
		t.Errorf("default = %d (%s), %v; want %d, a quarter of the file system", got, why, err, want)
	}
	for _, arg := range []string{"-1Gi", "lots", "20 GiB", "1.5.5"} {
		_, _, err := imageCacheSize(parseOptions(t, "--image-cache-size", arg), work)
		if err == nil || !strings.Contains(err.Error(), "--image-cache-size") || !strings.Contains(err.Error(), "50Gi") {
			t.Errorf("--image-cache-size %q: err = %v, want it to name the flag and an example", arg, err)
		}
	}
	if _, err := goldenImagesPerNamespace(parseOptions(t, "--golden-images-per-namespace", "-1")); err == nil ||
		!strings.Contains(err.Error(), "--golden-images-per-namespace") {
		t.Errorf("--golden-images-per-namespace -1: err = %v", err)
	}
	if n, err := goldenImagesPerNamespace(parseOptions(t)); err != nil || n != simulator.DefaultGoldenImagesPerNamespace {
		t.Errorf("--golden-images-per-namespace default = %d, %v", n, err)
	}
}
