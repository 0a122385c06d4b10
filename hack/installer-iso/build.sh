#!/usr/bin/env bash
# build.sh builds the base installer ISO from Debian packages and this repo's installer agent, and
# prints its absolute path.
#
#   hack/installer-iso/build.sh [OUT_DIR]
#
# The ISO lands in OUT_DIR/installer-<key>/installer.iso, where OUT_DIR defaults to
# ${STARGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stargate}/installer-iso and <key> is the first 16
# hex digits of the sha256 over this recipe (every file under hack/installer-iso/) and the agent
# binary (built first, reproducibly: -trimpath, no build ID), so a change to either rebuilds it. An
# existing ISO is reused at once. The build needs no root (only to install missing host packages);
# it runs in a temporary directory next to the result, and the ISO is renamed into place at the very
# end, so an interrupted build never looks cached. Logs go to stderr, only the path to stdout.
#
# What is in it: a hybrid BIOS/UEFI ISO (grub-mkrescue; volume ID STARGATE_INSTALLER, which the
# agent uses to never install onto its own medium) with
#   /boot/vmlinuz          the kernel of Debian's linux-image-amd64 (extracted, not installed)
#   /boot/initrd.gz        cpio newc + gzip: the static agent as /init, the kernel modules for
#                          common storage controllers and NICs (plus their dependencies), and a
#                          modules.alias/modules.dep that depmod made for exactly those modules
#   /stargate/config.img   the config slot: SLOT_BYTES zeros, loaded as a second initrd. The
#                          controller puts each Operation's install spec there without rebuilding
#                          the ISO (pkg/installeriso); zeros are an empty initrd to the kernel.
#   /boot/grub/grub.cfg    boots at once, console on the screen and on ttyS0
# and next to it manifest.txt (kernel version, modules, sizes). UEFI Secure Boot is not supported:
# the EFI GRUB that grub-mkrescue embeds is unsigned.
#
# Environment: STARGATE_CACHE (cache root), STARGATE_DEBIAN_MIRROR (default: the bookworm mirror this
# host's apt sources name; see debian_mirror in scripts/lib.sh; not part of the key), GO (default go).
set -euo pipefail

readonly SUITE=bookworm
readonly KERNEL_PACKAGE=linux-image-amd64
# Must equal installeriso.SlotBytes (pkg/installeriso refuses a base ISO whose slot differs).
readonly SLOT_BYTES=2097152
readonly VOLUME_ID=STARGATE_INSTALLER
# Drivers by module name; each brings its dependencies. Storage: virtio, SATA/AHCI (and legacy
# PIIX), NVMe, the common SAS/RAID HBAs. NICs: virtio, Intel, Broadcom, Mellanox, Realtek, VMware.
# (bnx2x, qede and some others need firmware from Debian's non-free-firmware, which is not included.)
readonly MODULES=(
	virtio_pci virtio_blk virtio_scsi sd_mod
	ahci ata_piix nvme megaraid_sas mpt3sas smartpqi hpsa aacraid
	virtio_net e1000 e1000e igb igc ixgbe i40e ice bnxt_en tg3 mlx4_en mlx5_core r8169 vmxnet3
)
readonly KERNEL_CMDLINE="console=tty0 console=ttyS0,115200"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
LOG_TAG=installer-iso
# shellcheck source=scripts/lib.sh
source "${repo}/scripts/lib.sh"
cache_root="${STARGATE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/stargate}"
out_root="$(realpath -m -- "${1:-${cache_root}/installer-iso}")"
mkdir -p "${out_root}"

# --- the agent (its binary is part of the key) -----------------------------------------------------
agent_tmp="$(mktemp "${out_root}/.agent.XXXXXX")"
trap 'rm -f "${agent_tmp}"' EXIT
(cd "${repo}" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 "${GO:-go}" build -trimpath -ldflags "-s -w -buildid=" \
	-o "${agent_tmp}" ./cmd/stargate-installer) || die "building the installer agent failed"
key="$({
	(cd "${here}" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
	sha256sum <"${agent_tmp}"
} | sha256sum | cut -c1-16)"
final_dir="${out_root}/installer-${key}"
iso="${final_dir}/installer.iso"

if [[ -f "${iso}" ]]; then
	log "cached: ${iso}"
	printf '%s\n' "${iso}"
	exit 0
fi

# --- host tools -------------------------------------------------------------------------------------
need=()
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v apt-get >/dev/null || die "apt-get is needed to fetch Debian's kernel package"
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
command -v xorriso >/dev/null || need+=(xorriso)
command -v mformat >/dev/null || need+=(mtools)
command -v grub-mkrescue >/dev/null || need+=(grub-common)
[[ -d /usr/lib/grub/i386-pc ]] || need+=(grub-pc-bin)
[[ -d /usr/lib/grub/x86_64-efi ]] || need+=(grub-efi-amd64-bin)
[[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || need+=(debian-archive-keyring)
if ((${#need[@]})); then
	[[ "$(id -u)" == 0 ]] || die "missing host packages: ${need[*]}; run: sudo apt-get install -y --no-install-recommends ${need[*]}"
	log "installing missing host packages: ${need[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2; then
		apt-get update >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
	fi
fi
depmod_bin="$(command -v depmod)"
modprobe_bin="$(command -v modprobe || printf '/usr/sbin/modprobe')"

# --- workspace --------------------------------------------------------------------------------------
mkdir -p "${final_dir}"
exec 9>"${final_dir}/.lock"
flock 9 # one build per key at a time; a waiting build then finds the ISO cached
if [[ -f "${iso}" ]]; then
	log "cached (built concurrently): ${iso}"
	printf '%s\n' "${iso}"
	exit 0
fi
for stale in "${final_dir}".tmp.*; do
	[[ -d "${stale}" ]] || continue
	log "removing stale build directory ${stale}"
	rm -rf --one-file-system -- "${stale}"
done
work="$(mktemp -d "${final_dir}.tmp.XXXXXX")"
cleanup() {
	local rc=$?
	rm -f "${agent_tmp}"
	rm -rf --one-file-system -- "${work}"
	if ((rc != 0)); then log "build failed (exit ${rc}); removed ${work}"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
start=${SECONDS}

# --- the kernel package, through a private apt state (the host's package database is not touched) --
mirror="$(debian_mirror "${SUITE}")"
apt_dir="${work}/apt"
debs="${out_root}/.debs" # downloaded packages, reused by later builds (apt verifies them)
mkdir -p "${apt_dir}/lists/partial" "${apt_dir}/parts" "${debs}"
printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' "${mirror}" "${SUITE}" >"${apt_dir}/sources.list"
: >"${apt_dir}/status"
apt_opts=(
	-o "Dir::Etc::SourceList=${apt_dir}/sources.list" -o "Dir::Etc::SourceParts=${apt_dir}/parts"
	-o "Dir::State::Lists=${apt_dir}/lists" -o "Dir::State::Status=${apt_dir}/status"
	-o "Dir::Cache=${apt_dir}/cache" -o "Debug::NoLocking=1"
	-o "APT::Sandbox::User=$(id -un)"
)
log "reading ${SUITE}'s package index from ${mirror}"
apt-get "${apt_opts[@]}" -qq update >&2 || die "apt-get update against ${mirror} failed"
kernel_pkg="$(apt-cache "${apt_opts[@]}" depends "${KERNEL_PACKAGE}" |
	awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
[[ -n "${kernel_pkg}" ]] || die "${KERNEL_PACKAGE} depends on no linux-image-<version> package in ${SUITE}"
kernel_version="$(apt-cache "${apt_opts[@]}" show --no-all-versions "${kernel_pkg}" | awk '$1 == "Version:" { print $2; exit }')"
log "kernel package ${kernel_pkg} ${kernel_version}"
# apt-get download saves into the current directory and fetches nothing when a file there already
# has the index's checksum: the cache directory keeps the package across builds.
(cd "${debs}" && apt-get "${apt_opts[@]}" -qq download "${kernel_pkg}" >&2) || die "downloading ${kernel_pkg} failed"
deb="$(find "${debs}" -maxdepth 1 -name "${kernel_pkg}_*.deb" -print -quit)"
[[ -n "${deb}" ]] || die "apt-get download left no ${kernel_pkg}_*.deb"
kroot="${work}/kernel"
dpkg-deb -x "${deb}" "${kroot}"
kver="${kernel_pkg#linux-image-}"
[[ -d "${kroot}/lib/modules/${kver}" && -f "${kroot}/boot/vmlinuz-${kver}" ]] ||
	die "${deb} has no /boot/vmlinuz-${kver} or /lib/modules/${kver}"
"${depmod_bin}" -b "${kroot}" "${kver}"

# --- initramfs ----------------------------------------------------------------------------------------
initdir="${work}/initramfs"
moddir="lib/modules/${kver}"
mkdir -p "${initdir}"/{dev,proc,sys,tmp,etc,"${moddir}"}
install -m 0755 "${agent_tmp}" "${initdir}/init"
files=()
for module in "${MODULES[@]}"; do
	deps="$("${modprobe_bin}" -d "${kroot}" -S "${kver}" --show-depends "${module}")" ||
		die "module ${module} is not in ${kernel_pkg}"
	while read -r verb path _; do
		[[ "${verb}" == insmod ]] && files+=("${path#"${kroot}/${moddir}/"}")
	done <<<"${deps}"
done
mapfile -t files < <(printf '%s\n' "${files[@]}" | LC_ALL=C sort -u)
(cd "${kroot}/${moddir}" && cp --parents -- "${files[@]}" modules.order modules.builtin modules.builtin.modinfo "${initdir}/${moddir}/")
# The agent loads plain .ko files: decompress any that Debian ships compressed (bookworm does not).
while IFS= read -r -d '' ko; do
	case "${ko}" in
	*.xz) xz -d -- "${ko}" ;;
	*.zst) zstd -q -d --rm -- "${ko}" ;;
	*.gz) gzip -d -- "${ko}" ;;
	esac
done < <(find "${initdir}/${moddir}" -name '*.ko.*' -print0)
"${depmod_bin}" -b "${initdir}" "${kver}"
rm -f "${initdir}/${moddir}"/*.bin "${initdir}/${moddir}/modules.builtin.modinfo" # the agent reads the text files
[[ -s "${initdir}/${moddir}/modules.alias" ]] || die "depmod wrote no modules.alias"
log "initramfs: agent + ${#files[@]} modules ($(du -sm "${initdir}" | cut -f1) MiB)"
(cd "${initdir}" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
	cpio -o -H newc --reproducible --owner=0:0 --quiet) | gzip -9n >"${work}/initrd.gz"

# --- ISO --------------------------------------------------------------------------------------------
tree="${work}/iso"
mkdir -p "${tree}/boot/grub" "${tree}/stargate"
cp "${kroot}/boot/vmlinuz-${kver}" "${tree}/boot/vmlinuz"
mv "${work}/initrd.gz" "${tree}/boot/initrd.gz"
head -c "${SLOT_BYTES}" /dev/zero >"${tree}/stargate/config.img"
cat >"${tree}/boot/grub/grub.cfg" <<EOF
# Written by hack/installer-iso/build.sh. The second initrd is the per-Operation config slot.
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set default=0
set timeout=0
menuentry 'Stargate installer' {
	linux /boot/vmlinuz ${KERNEL_CMDLINE}
	initrd /boot/initrd.gz /stargate/config.img
}
EOF
log "grub-mkrescue (BIOS + UEFI)"
if ! grub-mkrescue --compress=xz -o "${work}/installer.iso" "${tree}" -- -volid "${VOLUME_ID}" >"${work}/mkrescue.log" 2>&1; then
	cat "${work}/mkrescue.log" >&2
	die "grub-mkrescue failed"
fi
{
	printf 'kernel\t%s %s\n' "${kernel_pkg}" "${kernel_version}"
	printf 'initrd\t%s bytes\n' "$(stat -c %s "${tree}/boot/initrd.gz")"
	printf 'iso\t%s bytes\n' "$(stat -c %s "${work}/installer.iso")"
	printf 'module\t%s\n' "${files[@]}"
} >"${work}/manifest.txt"
mv -f "${work}/manifest.txt" "${final_dir}/manifest.txt"
mv -f "${work}/installer.iso" "${iso}" # the rename makes the ISO visible (cached) only when complete
log "done after $((SECONDS - start)) s: ${iso} ($(du -m "${iso}" | cut -f1) MiB)"
printf '%s\n' "${iso}"
