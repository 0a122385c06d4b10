package app

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"

	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/pkg/imagecache"
)

// listFlag is a flag that may be repeated and takes comma-separated values.
type listFlag struct{ values *[]string }

func (l listFlag) String() string {
	if l.values == nil {
		return ""
	}
	return strings.Join(*l.values, ",")
}

func (l listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l.values = append(*l.values, v)
		}
	}
	return nil
}

// bindImageFlags registers the flags of the image policy: which image URLs tenants' profiles
// may name, and the limits of a download.
func (o *Options) bindImageFlags(fs *flag.FlagSet) {
	fs.Var(listFlag{&o.ImageDirs}, "image-dir",
		"directory whose files file:// image URLs may name (repeat or comma-separate; symlinks leading out are refused;"+
			" default: none, file URLs are refused)")
	fs.Var(listFlag{&o.AllowImageHosts}, "allow-image-hosts",
		"addresses or CIDRs http(s) image URLs may reach although refused by default: loopback, link-local, multicast, this host's own addresses"+
			" and the VM network (repeat or comma-separate; default: none)")
	fs.StringVar(&o.MaxImageSize, "max-image-size", "20Gi", "largest OS image downloaded; a larger one fails with ImageTooLarge")
	fs.StringVar(&o.ImageCacheSize, "image-cache-size", "",
		"disk space the cached OS images and golden images (and bakes in progress) may take together, e.g. 50Gi; over it, the least"+
			fmt.Sprintf(" recently used are removed, never one a VM or bake uses (default: %d%% of the work directory's file system; 0: no limit)",
				defaultImageCacheShare))
	fs.IntVar(&o.GoldenImagesPerNamespace, "golden-images-per-namespace", simulator.DefaultGoldenImagesPerNamespace,
		"golden images kept per namespace; over it, the least recently used one no VM uses is removed after a bake (0: no limit)")
	fs.DurationVar(&o.ImageConnectTimeout, "image-connect-timeout", imagecache.DefaultConnectTimeout,
		"image downloads: timeout of the TCP connect and of the TLS handshake")
	fs.DurationVar(&o.ImageHeaderTimeout, "image-header-timeout", imagecache.DefaultHeaderTimeout, "image downloads: timeout for the response headers")
	fs.DurationVar(&o.ImageStallTimeout, "image-stall-timeout", imagecache.DefaultStallTimeout,
		"image downloads: fail a download that received nothing for this long (the next Operation tries again)")
}

// imagePolicy checks the image flags and turns them into the simulator's image policy.
func imagePolicy(o Options) (simulator.ImagePolicy, error) {
	pol := simulator.ImagePolicy{
		ConnectTimeout: o.ImageConnectTimeout, HeaderTimeout: o.ImageHeaderTimeout, StallTimeout: o.ImageStallTimeout,
		// Much longer than the poll interval: only a download no repave polls any more is cancelled.
		IdleTimeout: max(simulator.DefaultImageIdleTimeout, 20*o.PollInterval),
	}
	for _, d := range o.ImageDirs {
		if !filepath.IsAbs(d) {
			return pol, fmt.Errorf("--image-dir %q: want an absolute path", d)
		}
		if filepath.Clean(d) == "/" {
			return pol, errors.New("--image-dir /: that would let every profile read any file of this host (/etc/shadow, kubeconfigs);" +
				" name the directory that holds images")
		}
		if fi, err := os.Stat(d); err != nil {
			return pol, fmt.Errorf("--image-dir %q: not a directory: %w", d, err)
		} else if !fi.IsDir() {
			return pol, fmt.Errorf("--image-dir %q: not a directory", d)
		}
		pol.FileDirs = append(pol.FileDirs, filepath.Clean(d))
	}
	for _, h := range o.AllowImageHosts {
		p, err := netip.ParsePrefix(h)
		if err != nil {
			a, aerr := netip.ParseAddr(h)
			if aerr != nil {
				return pol, fmt.Errorf("--allow-image-hosts %q: want an address or a CIDR such as 192.168.100.1 or 10.0.0.0/8", h)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		pol.AllowHosts = append(pol.AllowHosts, p.Masked())
	}
	if o.MaxImageSize != "" {
		n, err := parseQuantity(o.MaxImageSize)
		if err != nil || n <= 0 {
			return pol, fmt.Errorf("--max-image-size %q: want a size such as 20Gi", o.MaxImageSize)
		}
		pol.MaxBytes = n
	}
	for name, d := range map[string]time.Duration{"--image-connect-timeout": o.ImageConnectTimeout,
		"--image-header-timeout": o.ImageHeaderTimeout, "--image-stall-timeout": o.ImageStallTimeout} {
		if d < 0 {
			return pol, fmt.Errorf("%s %s: want a positive duration (0: the default)", name, d)
		}
	}
	return pol, nil
}

// defaultImageCacheShare is the part of the work directory's file system (in percent) that the
// image cache and golden images may take when --image-cache-size is not given: the VM disks,
// which grow as their guests write, live there too.
const defaultImageCacheShare = 25

// imageCacheSize checks --image-cache-size: a size (0 means no limit). Not given, it is
// defaultImageCacheShare of the size of the file system that holds (or will hold) workDir; why
// says which, for the startup log.
func imageCacheSize(o Options, workDir string) (size int64, why string, err error) {
	if o.ImageCacheSize == "" {
		fsSize, err := fileSystemSize(workDir)
		if err != nil {
			return 0, "", fmt.Errorf("--image-cache-size not given, and the size of the work directory's file system is unknown "+
				"(give --image-cache-size, e.g. 50Gi, or 0 for no limit): %w", err)
		}
		return fsSize * defaultImageCacheShare / 100, fmt.Sprintf("%d%% of the work directory's file system (%s)",
			defaultImageCacheShare, resource.NewQuantity(fsSize, resource.BinarySI)), nil
	}
	n, err := parseQuantity(o.ImageCacheSize)
	if err != nil || n < 0 {
		return 0, "", fmt.Errorf("--image-cache-size %q: want a size such as 50Gi (0: no limit)", o.ImageCacheSize)
	}
	if n == 0 {
		return 0, "--image-cache-size 0: no limit", nil
	}
	return n, "--image-cache-size", nil
}

// fileSystemSize is the size of the file system that holds path, or would: its nearest existing
// ancestor's.
func fileSystemSize(path string) (int64, error) {
	for dir := filepath.Clean(path); ; dir = filepath.Dir(dir) {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			return int64(st.Blocks) * st.Bsize, nil
		}
		if !errors.Is(err, unix.ENOENT) || dir == filepath.Dir(dir) {
			return 0, fmt.Errorf("statfs %s: %w", dir, err)
		}
	}
}

// goldenImagesPerNamespace checks --golden-images-per-namespace.
func goldenImagesPerNamespace(o Options) (int, error) {
	if o.GoldenImagesPerNamespace < 0 {
		return 0, fmt.Errorf("--golden-images-per-namespace %d: want a number of images (0: no limit)", o.GoldenImagesPerNamespace)
	}
	return o.GoldenImagesPerNamespace, nil
}
