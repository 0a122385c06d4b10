package simulator

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/testreq"
)

// These tests drive the image step of a repave (Provider.image) with real files, a real image
// cache and httptest servers; they need neither root nor a VM, and run with -short.

var imgTestLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// imgTestProvider is a Provider with only what the image step needs.
func imgTestProvider(t *testing.T, pol ImagePolicy) *Provider {
	t.Helper()
	return &Provider{
		cfg:     Config{Images: pol},
		images:  newImageCache(filepath.Join(t.TempDir(), "images"), pol, netip.MustParsePrefix("192.168.100.1/24")),
		fetches: map[string]*imageFetch{},
	}
}

// imgTestStep runs the image step for instance until it is no longer in progress, as the
// controller's polls would, and returns the ImageReady step and the image path.
func imgTestStep(t *testing.T, p *Provider, instance, url, checksum string) (controller.Step, string) {
	t.Helper()
	req := controller.RepaveRequest{InstanceID: instance, ImageURL: url, ImageChecksum: checksum}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := newStatus()
		path := p.image(t.Context(), st, req).Path
		step := imgTestImageStep(st)
		if step.State != controller.StepInProgress {
			return step, path
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s: %s", url, step.Reason, step.Message)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func imgTestImageStep(st *status) controller.Step {
	for _, s := range st.Steps {
		if s.Type == stargatev1.ConditionImageReady {
			return s
		}
	}
	return controller.Step{}
}

// imgTestMBR is a small raw disk with an MBR boot signature.
func imgTestMBR(size int) []byte {
	b := make([]byte, size)
	b[510], b[511] = 0x55, 0xaa
	return b
}

// imgTestCacheEntries counts the image cache's entries.
func imgTestCacheEntries(t *testing.T, p *Provider) int {
	t.Helper()
	des, err := os.ReadDir(p.images.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return len(des)
}

// TestImageStepReasons: each kind of bad image source fails ImageReady within seconds with a
// reason a user can act on (and the flag that would widen the policy, where the fix is the
// operator's), caches nothing, and starts no VM work; good images are Cached.
func TestImageStepReasons(t *testing.T) {
	t.Parallel()
	files := t.TempDir()
	write := func(name string, b []byte) string {
		path := filepath.Join(files, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	write("page.html", []byte("<!doctype html><html><body>Log in to continue</body></html>\n"))
	write("notes.txt", []byte("this is a text file, not a disk\n"))
	write("desc.vmdk", []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/shadow\" 0\n"))
	disk := write("disk.raw", imgTestMBR(64<<10))
	write("big.raw", imgTestMBR(2<<20))
	haveQemuImg := false
	if _, err := exec.LookPath("qemu-img"); err == nil {
		haveQemuImg = true
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname",
			filepath.Join(files, "backed.qcow2"), "1M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v\n%s", err, out)
		}
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(files)))
	t.Cleanup(srv.Close)

	open := ImagePolicy{FileDirs: []string{files}, AllowHosts: imgTestLoopback, MaxBytes: 1 << 20}
	cases := []struct {
		name     string
		pol      ImagePolicy
		url      string
		checksum string
		reason   string
		msg      string
	}{
		{"file URL without --image-dir", ImagePolicy{}, "file:///etc/shadow", "", "ImageSourceNotAllowed", "--image-dir"},
		{"file outside --image-dir", open, "file:///etc/shadow", "", "ImageSourceNotAllowed", "not below"},
		{"loopback without --allow-image-hosts", ImagePolicy{}, srv.URL + "/disk.raw", "", "ImageSourceNotAllowed", "--allow-image-hosts"},
		{"metadata address", open, "http://169.254.169.254/latest/meta-data/", "", "ImageSourceNotAllowed", "link-local"},
		{"VM network", open, "http://192.168.100.23/disk.raw", "", "ImageSourceNotAllowed", "192.168.100.0/24"},
		{"HTML page", open, srv.URL + "/page.html", "", "UnsupportedImage", "not a disk image"},
		{"text file", open, "file://" + files + "/notes.txt", "", "UnsupportedImage", "not a disk image"},
		{"VMDK descriptor", open, srv.URL + "/desc.vmdk", "", "UnsupportedImage", "VMDK"},
		{"qcow2 with a backing file", open, srv.URL + "/backed.qcow2", "", "UnsupportedImage", "backing file"},
		{"too large", open, srv.URL + "/big.raw", "", "ImageTooLarge", "--max-image-size"},
		{"missing", open, srv.URL + "/nope.raw", "", "ImageNotFound", "404"},
		{"checksum", open, srv.URL + "/disk.raw", "sha256:" + strings.Repeat("0", 64), "ChecksumMismatch", "checksum"},
		{"raw disk over http", open, srv.URL + "/disk.raw", "", "Cached", "64.0 KiB"},
		{"raw disk from --image-dir", open, "file://" + disk, "", "Cached", "file://"},
		{"loopback with --allow-image-hosts", ImagePolicy{AllowHosts: imgTestLoopback}, srv.URL + "/disk.raw", "", "Cached", "sha256:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.name == "qcow2 with a backing file" && !haveQemuImg {
				testreq.Need(t, "qemu-img", "apt-get install -y qemu-utils")
			}
			p := imgTestProvider(t, tc.pol)
			start := time.Now()
			step, path := imgTestStep(t, p, "i-1", tc.url, tc.checksum)
			if step.Reason != tc.reason || !strings.Contains(step.Message, tc.msg) {
				t.Errorf("ImageReady %s %q; want reason %s mentioning %q", step.Reason, step.Message, tc.reason, tc.msg)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %s", d)
			}
			if tc.reason == "Cached" {
				if step.State != controller.StepDone || path == "" {
					t.Errorf("step %+v, path %q; want done with a path", step, path)
				}
				return
			}
			if step.State != controller.StepFailed || path != "" {
				t.Errorf("step %+v, path %q; want failed without a path", step, path)
			}
			if strings.Contains(step.Message, "Log in") || strings.Contains(step.Message, ".tmp-") {
				t.Errorf("message quotes the content or a temp file: %s", step.Message)
			}
			if n := imgTestCacheEntries(t, p); n != 0 {
				t.Errorf("%d cache entries after a refused image", n)
			}
			t.Log(step.Message)
		})
	}
}

// TestImageStepStallRetriedByNextOperation: a server that stalls mid-body fails the repave
// that waited for it within the stall timeout (DownloadStalled, with progress shown while it
// lasted); the next Operation downloads again and succeeds.
func TestImageStepStallRetriedByNextOperation(t *testing.T) {
	t.Parallel()
	content := imgTestMBR(4 << 20)
	var stall atomic.Bool
	stall.Store(true)
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		if !stall.Load() {
			_, _ = w.Write(content)
			return
		}
		_, _ = w.Write(content[:len(content)/2])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	p := imgTestProvider(t, ImagePolicy{AllowHosts: imgTestLoopback, StallTimeout: 300 * time.Millisecond})
	url := srv.URL + "/disk.raw"

	// Progress while it downloads: bytes of the total and a percentage.
	req := controller.RepaveRequest{InstanceID: "op-1", ImageURL: url}
	var progress string
	for deadline := time.Now().Add(10 * time.Second); progress == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		st := newStatus()
		p.image(t.Context(), st, req)
		if s := imgTestImageStep(st); s.State == controller.StepInProgress && strings.Contains(s.Message, "of 4.0 MiB (") {
			progress = s.Message
		}
	}
	if progress == "" {
		t.Error("no progress with bytes and percentage while downloading")
	}
	t.Log(progress)

	start := time.Now()
	step, _ := imgTestStep(t, p, "op-1", url, "")
	if step.Reason != "DownloadStalled" {
		t.Fatalf("ImageReady %s %q; want DownloadStalled", step.Reason, step.Message)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the stall was noticed after %s", d)
	}
	t.Log(step.Message)

	stall.Store(false)
	step, path := imgTestStep(t, p, "op-2", url, "")
	if step.Reason != "Cached" || path == "" {
		t.Fatalf("next Operation: ImageReady %s %q; want Cached", step.Reason, step.Message)
	}
	if n := gets.Load(); n != 2 {
		t.Errorf("%d GETs, want 2", n)
	}
}

// TestImageStepFailureOnlyForThoseWhoWaited: a failed download nobody saw does not fail a
// later repave: it downloads again.
func TestImageStepFailureOnlyForThoseWhoWaited(t *testing.T) {
	t.Parallel()
	var fail atomic.Bool
	fail.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(imgTestMBR(4096))
	}))
	t.Cleanup(srv.Close)
	p := imgTestProvider(t, ImagePolicy{AllowHosts: imgTestLoopback})
	url := srv.URL + "/disk.raw"

	// op-1 starts the download and goes away (its Operation was deleted) before the verdict.
	p.image(t.Context(), newStatus(), controller.RepaveRequest{InstanceID: "op-1", ImageURL: url})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		p.mu.Lock()
		f := p.fetches[url+"\x00"]
		p.mu.Unlock()
		if f != nil && f.done.Load() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the download did not finish")
		}
	}
	fail.Store(false)
	step, _ := imgTestStep(t, p, "op-2", url, "")
	if step.Reason != "Cached" {
		t.Errorf("op-2: ImageReady %s %q; want Cached, not op-1's failure", step.Reason, step.Message)
	}
}

// TestImageStepIdleDownloadCancelled: a download no repave asks about any more is cancelled
// (the server sees its request end) and forgotten.
func TestImageStepIdleDownloadCancelled(t *testing.T) {
	t.Parallel()
	cancelled := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1048576")
		_, _ = w.Write(make([]byte, 1024))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(cancelled)
	}))
	t.Cleanup(srv.Close)
	p := imgTestProvider(t, ImagePolicy{AllowHosts: imgTestLoopback, IdleTimeout: 200 * time.Millisecond})
	p.image(t.Context(), newStatus(), controller.RepaveRequest{InstanceID: "op-1", ImageURL: srv.URL + "/disk.raw"})
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the download nobody waits for was not cancelled")
	}
	// Forgotten, and its entry cleaned up (in the background, after the cancel) before the test's
	// directories go.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		p.mu.Lock()
		n := len(p.fetches)
		p.mu.Unlock()
		left, _ := os.ReadDir(p.layout.ImagesDir())
		if n == 0 && len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d downloads remembered, %d cache entries left after the cancel", n, len(left))
		}
	}
}

// TestImageStepEntryRemovedByHand: a cache entry removed by hand is fetched again by the next
// repave instead of failing it.
func TestImageStepEntryRemovedByHand(t *testing.T) {
	t.Parallel()
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		gets.Add(1)
		_, _ = w.Write(imgTestMBR(4096))
	}))
	t.Cleanup(srv.Close)
	p := imgTestProvider(t, ImagePolicy{AllowHosts: imgTestLoopback})
	url := srv.URL + "/disk.raw"
	if step, _ := imgTestStep(t, p, "op-1", url, ""); step.Reason != "Cached" {
		t.Fatalf("ImageReady %s %q", step.Reason, step.Message)
	}
	if err := os.RemoveAll(p.images.Dir); err != nil {
		t.Fatal(err)
	}
	step, path := imgTestStep(t, p, "op-2", url, "")
	if step.Reason != "Cached" {
		t.Fatalf("after removing the cache: ImageReady %s %q; want Cached", step.Reason, step.Message)
	}
	if _, err := os.Stat(path); err != nil {
		t.Error(err)
	}
	if n := gets.Load(); n != 2 {
		t.Errorf("%d GETs, want 2", n)
	}
}

func TestDownloadMessage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{300 << 20, 700 << 20, 10 * time.Second, "Downloading u: 300.0 MiB of 700.0 MiB (42%), 30.0 MiB/s"},
		{5 << 20, -1, 2 * time.Second, "Downloading u: 5.0 MiB, 2.5 MiB/s"},
		{0, -1, 0, "Downloading u: 0 B"},
		{3 << 30, 4 << 30, time.Minute, "Downloading u: 3.0 GiB of 4.0 GiB (75%), 51.2 MiB/s"},
	} {
		if got := downloadMessage("u", tc.done, tc.total, tc.elapsed); got != tc.want {
			t.Errorf("downloadMessage(%d, %d, %s) = %q, want %q", tc.done, tc.total, tc.elapsed, got, tc.want)
		}
	}
}
