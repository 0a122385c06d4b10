#!/usr/bin/env bash
# kube-binaries.sh builds Kubernetes and etcd binaries from the Go module proxy (no download site is
# needed) into a cache outside the checkout, keyed by version, and prints the directory.
#
#   hack/kube-binaries.sh envtest   # etcd + kube-apiserver (what envtest needs)
#   hack/kube-binaries.sh all       # + kube-controller-manager, kube-scheduler, kubelet, kubeadm, kubectl
#   hack/kube-binaries.sh dir       # only print the directory (build nothing)
#
# A binary is built only when missing; each lands via a temporary name + rename, so an interrupted
# build never leaves a half-written binary that looks cached.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"
CACHE="${STARGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stargate}"
OUT="${CACHE}/kubernetes-${KUBE_VERSION}-etcd-${ETCD_VERSION}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

what="${1:-envtest}"
if [[ "${what}" == dir ]]; then
	echo "${OUT}"
	exit 0
fi
case "${what}" in
envtest) kube_bins=(kube-apiserver) ;;
all) kube_bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm kubectl) ;;
*) echo "usage: $0 envtest|all|dir" >&2; exit 2 ;;
esac

mkdir -p "${OUT}"

# kubeadm refuses binaries stamped v0.0.0-master, so stamp the real version.
minor="${KUBE_VERSION#v}"; minor="${minor#*.}"; minor="${minor%%.*}"
major="${KUBE_VERSION#v}"; major="${major%%.*}"
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
	ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done

build() { # build MODULE_DIR PACKAGE NAME
	local dir="$1" pkg="$2" name="$3"
	[[ -x "${OUT}/${name}" ]] && return 0
	echo "building ${name} (${pkg}) into ${OUT} ..." >&2
	local start=$SECONDS
	(cd "${dir}" && go build -ldflags "${ldflags}" -o "${OUT}/.${name}.tmp" "${pkg}")
	mv -f "${OUT}/.${name}.tmp" "${OUT}/${name}"
	echo "built ${name} in $((SECONDS - start))s" >&2
}

build "${HERE}/tools/etcd" . etcd
for b in "${kube_bins[@]}"; do
	build "${HERE}/tools/kubernetes" "k8s.io/kubernetes/cmd/${b}" "${b}"
done
echo "${OUT}"
