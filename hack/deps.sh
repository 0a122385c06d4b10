#!/usr/bin/env bash
# deps.sh makes sure the Debian packages that `make test`, `make e2e` and `make demo` need are
# installed (make deps, a prerequisite of each). As root it installs the missing ones with apt-get;
# otherwise it prints the exact apt-get line and exits 1, before anything slow starts.
#
#   hack/deps.sh          # check, and install what is missing (root)
#   hack/deps.sh --list   # print the package list
#
# Go 1.26 itself is not a Debian 12 package: install it from https://go.dev/dl/.
# On a system without dpkg/apt-get (not Debian or Ubuntu) it only warns.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_TAG=deps
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"

readonly PACKAGES=(
	make git gcc ca-certificates curl python3 procps iproute2 iputils-ping iptables # build, tests, local cluster
	nftables                                                                       # injected network faults (nft, netdev tables on a VM's tap)
	qemu-system-x86 qemu-utils                                                     # VMs, disks (qemu-img, qemu-io)
	debootstrap e2fsprogs fdisk grub-pc-bin                                        # the offline guest image
	xorriso                                                                        # with grub-pc-bin, grub-mkrescue: the virtual media test's bootable ISO
	grub-efi-amd64-bin mtools kmod cpio                                            # the installer ISO (UEFI GRUB, its FAT image, depmod, initramfs)
	ovmf                                                                           # UEFI firmware: the installer ISO's UEFI boot test
	python3-sushy                                                                  # pkg/redfish: OpenStack Ironic's Redfish client
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients                      # pkg/redfishclient, internal/redfishdc: libvirt behind sushy-emulator
	python3-libvirt python3-flask python3-tenacity python3-bcrypt python3-webob    # sushy-emulator (OpenStack's BMC emulator, from
	python3-pbr python3-requests                                                   #   ../shared/third_party/sushy-tools)
	shellcheck                                                                     # make lint
	skopeo umoci                                                                   # hack/image's test reads the image with them
)

if [[ "${1:-}" == --list ]]; then
	printf '%s\n' "${PACKAGES[@]}"
	exit 0
fi

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
	log "WARNING: no dpkg/apt-get here: make sure the equivalents of these Debian packages are installed: ${PACKAGES[*]}"
	exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
	[[ "$(dpkg-query -W -f='${db:Status-Status}' "${p}" 2>/dev/null)" == installed ]] || missing+=("${p}")
done
((${#missing[@]})) || exit 0

if [[ "$(id -u)" != 0 ]]; then
	log "missing Debian packages: ${missing[*]}. Install them with:"
	printf '  sudo apt-get update && sudo apt-get install -y --no-install-recommends %s\n' "${missing[*]}" >&2
	exit 1
fi
log "installing missing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "installed ${missing[*]}"
