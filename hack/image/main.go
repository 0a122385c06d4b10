// Command image builds the container image of the Redfish datacenter controller
// (`simulator --provider redfish`) without a container engine, from files already built:
//
//	go run ./hack/image --binary bin/image/simulator --installer-iso ISO --layout bin/image/oci \
//	    --tarball bin/image/stargate-redfish-dc.tar --tag localhost/stargate-redfish-dc:dev
//
// It writes an OCI image layout (skopeo, umoci, `podman pull oci:DIR`) and, with --tarball, an
// archive that `podman load` and `ctr images import` read. The build is reproducible: every
// timestamp is --epoch, tar entries are sorted and carry no host metadata, so the same inputs
// give the same image digest. `make image` passes the inputs and prints the digest.
//
// The image (linux/amd64) runs as uid 65532 and holds:
//
//	/usr/local/bin/simulator                  the static controller (CGO_ENABLED=0)
//	/usr/share/stargate/installer.iso         the base installer ISO it serves to BMCs
//	/usr/bin/qemu-img and its libraries       the provider converts OS images to raw with it
//	/etc/ssl/certs/ca-certificates.crt        for https image URLs
//	/etc/passwd, /etc/group                   root and nonroot (65532)
//	/var/lib/stargate (65532, 0700), /tmp     the work directory (a volume in the Pod) and /tmp
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// Paths inside the image that the manifests (config/redfish) rely on.
const (
	imageBinary       = "/usr/local/bin/simulator"
	imageInstallerISO = "/usr/share/stargate/installer.iso"
	imageWorkDir      = "/var/lib/stargate"
	nonrootID         = 65532
)

type options struct {
	Binary       string
	InstallerISO string
	QemuImg      string
	CACerts      string
	Layout       string
	Tarball      string
	Tag          string
	Source       string
	Version      string
	Revision     string
	Epoch        int64
}

func (o *options) bind(fs *flag.FlagSet) {
	fs.StringVar(&o.Binary, "binary", "", "the simulator binary, built with CGO_ENABLED=0 (required)")
	fs.StringVar(&o.InstallerISO, "installer-iso", "", "the base installer ISO, as `make installer-iso` prints (required)")
	fs.StringVar(&o.QemuImg, "qemu-img", "/usr/bin/qemu-img", "the qemu-img to copy in, with the host libraries it needs")
	fs.StringVar(&o.CACerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "the CA bundle to copy in (Debian's ca-certificates)")
	fs.StringVar(&o.Layout, "layout", "", "directory to write the OCI image layout to; it must not exist (required)")
	fs.StringVar(&o.Tarball, "tarball", "", "also write an archive for `podman load` / `ctr images import` here")
	fs.StringVar(&o.Tag, "tag", "localhost/stargate-redfish-dc:dev", "the image's name and tag (the layout's ref.name is the tag)")
	fs.StringVar(&o.Source, "source", "", "label org.opencontainers.image.source")
	fs.StringVar(&o.Version, "version", "", "label org.opencontainers.image.version")
	fs.StringVar(&o.Revision, "revision", "", "label org.opencontainers.image.revision")
	fs.Int64Var(&o.Epoch, "epoch", 0, "seconds since 1970: the time of every file and of the image (e.g. the commit's time)")
}

func (o options) check() error {
	var missing []string
	for name, v := range map[string]string{"--binary": o.Binary, "--installer-iso": o.InstallerISO, "--layout": o.Layout} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	if o.Epoch < 0 {
		return fmt.Errorf("--epoch %d: before 1970", o.Epoch)
	}
	return nil
}

func main() {
	var o options
	o.bind(flag.CommandLine)
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "image: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if err := o.check(); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(2)
	}
	digest, size, err := build(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "image: %s (%d MiB compressed) in %s\n", o.Tag, size>>20, o.Layout)
	fmt.Println(digest)
}
