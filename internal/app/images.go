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
	fs.StringVar(&o.ImageCacheSize, "image-cache-size", "0",
		"disk space the cached OS images and golden images may take together, e.g. 50Gi; over it, the least recently used are removed,"+
			" never one a VM or bake uses (0: no limit)")
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

// imageCacheSize checks --image-cache-size: a size (0, the default, means no limit).
func imageCacheSize(o Options) (int64, error) {
	if o.ImageCacheSize == "" {
		return 0, nil
	}
	n, err := parseQuantity(o.ImageCacheSize)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("--image-cache-size %q: want a size such as 50Gi (0: no limit)", o.ImageCacheSize)
	}
	return n, nil
}
