#!/usr/bin/env bash
# setup-demo.sh prepares the Stargate simulator demo on a Linux workstation with Docker and kind:
# it checks prerequisites, creates (or reuses) a kind cluster whose API server listens on this
# host's IP — so VMs on the simulator bridge reach it at <host-ip>:6443 — creates a fresh kubeadm
# join token, and writes ready-to-apply manifests (Server, k8s-worker ProvisioningProfile,
# Operation) to the output directory.
#
#   sudo ./scripts/setup-demo.sh [--cluster-name NAME] [--out-dir DIR] [--host-ip IP] [--recreate]
#
# Safe to run again: the cluster is reused, the token and the Operation are new each time.
set -euo pipefail

CLUSTER_NAME="${CLUSTER_NAME:-stargate}"
OUT_DIR="${OUT_DIR:-/tmp/stargate-demo}"
HOST_IP="${HOST_IP:-}"
RECREATE=false
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_TAG=setup-demo
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"

usage() {
	sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	exit "${1:-0}"
}

while (($#)); do
	case "$1" in
	--cluster-name) CLUSTER_NAME="${2:?--cluster-name needs a value}"; shift 2 ;;
	--out-dir) OUT_DIR="${2:?--out-dir needs a value}"; shift 2 ;;
	--host-ip) HOST_IP="${2:?--host-ip needs a value}"; shift 2 ;;
	--recreate) RECREATE=true; shift ;;
	-h | --help) usage 0 ;;
	*) echo "setup-demo: unknown argument $1" >&2; usage 2 ;;
	esac
done

[[ "${CLUSTER_NAME}" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "--cluster-name must be lower-case letters, digits and '-'"

# --- 1. Prerequisites: say exactly what is missing and how to install it.
check_prerequisites() {
	local missing=()
	command -v qemu-system-x86_64 >/dev/null || missing+=("qemu-system-x86_64: sudo apt-get install -y qemu-system-x86")
	command -v qemu-img >/dev/null || missing+=("qemu-img: sudo apt-get install -y qemu-utils")
	command -v docker >/dev/null || missing+=("docker: sudo apt-get install -y docker.io (or Docker CE), then start it: sudo systemctl start docker")
	command -v kind >/dev/null || missing+=("kind: go install sigs.k8s.io/kind@latest (then put \$(go env GOPATH)/bin on PATH), or see https://kind.sigs.k8s.io/docs/user/quick-start/#installation")
	command -v kubectl >/dev/null || missing+=("kubectl: https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/ (or: sudo snap install kubectl --classic)")
	command -v iptables >/dev/null || missing+=("iptables: sudo apt-get install -y iptables")
	if ((${#missing[@]})); then
		printf 'setup-demo: missing prerequisites:\n' >&2
		printf '  - %s\n' "${missing[@]}" >&2
		exit 1
	fi
	docker info >/dev/null 2>&1 || die "docker is installed but the Docker engine does not answer (is it running? sudo systemctl start docker). Without Docker, 'sudo make demo' uses the embedded local cluster instead."
	[[ -e /dev/kvm ]] || log "WARNING: /dev/kvm is missing: VMs will run under TCG software emulation (slow: several minutes per boot). Run the simulator with --accel=tcg."
}

# --- 2. Host IP: the address of the interface holding the default route (a route lookup; no
# packet is sent).
detect_host_ip() {
	if [[ -n "${HOST_IP}" ]]; then
		printf '%s\n' "${HOST_IP}"
		return
	fi
	local ip
	ip="$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}')"
	[[ -n "${ip}" ]] || ip="$(hostname -I 2>/dev/null | awk '{print $1}')"
	[[ -n "${ip}" ]] || die "cannot detect this host's IP address: pass --host-ip"
	printf '%s\n' "${ip}"
}

# --- 3. kind cluster with the API server on the host IP.
ensure_cluster() {
	local exists=false
	if kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; then exists=true; fi
	if ${exists} && ${RECREATE}; then
		log "deleting kind cluster ${CLUSTER_NAME} (--recreate)"
		kind delete cluster --name "${CLUSTER_NAME}"
		exists=false
	fi
	if ${exists}; then
		local published
		published="$(docker port "${CLUSTER_NAME}-control-plane" 6443/tcp 2>/dev/null | head -n1)"
		if [[ "${published}" != "${HOST_IP}:6443" ]]; then
			die "kind cluster ${CLUSTER_NAME} publishes its API server on '${published}', not ${HOST_IP}:6443 (did the host IP change?): rerun with --recreate"
		fi
		log "reusing kind cluster ${CLUSTER_NAME} (API server on ${published})"
		return
	fi
	local cfg="${OUT_DIR}/kind-config.yaml"
	cat >"${cfg}" <<KIND
# Written by scripts/setup-demo.sh: the API server listens on the host IP, so VMs on the
# simulator bridge can reach it (kind also adds the address to the serving certificate).
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: "${HOST_IP}"
  apiServerPort: 6443
KIND
	log "creating kind cluster ${CLUSTER_NAME} with its API server on ${HOST_IP}:6443"
	kind create cluster --name "${CLUSTER_NAME}" --config "${cfg}" --wait 180s
}

# --- 4. A fresh join command from the control plane.
join_parameters() {
	local line
	line="$(docker exec "${CLUSTER_NAME}-control-plane" kubeadm token create --ttl 24h --print-join-command)" ||
		die "creating a join token on ${CLUSTER_NAME}-control-plane failed"
	TOKEN="$(awk '{for (i = 1; i < NF; i++) if ($i == "--token") print $(i + 1)}' <<<"${line}")"
	CA_HASH="$(awk '{for (i = 1; i < NF; i++) if ($i == "--discovery-token-ca-cert-hash") print $(i + 1)}' <<<"${line}")"
	[[ "${TOKEN}" =~ ^[a-z0-9]{6}\.[a-z0-9]{16}$ ]] || die "unexpected token in join command: ${line}"
	[[ "${CA_HASH}" =~ ^sha256:[a-f0-9]{64}$ ]] || die "unexpected CA hash in join command: ${line}"
	local version
	version="$(docker exec "${CLUSTER_NAME}-control-plane" kubeadm version -o short)"
	[[ "${version}" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "unexpected kubeadm version '${version}'"
	K8S_MINOR="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
}

# DNS servers the VMs can use: the host's resolvers, unless they are local stubs (systemd-resolved).
detect_dns() {
	local f servers=()
	for f in /run/systemd/resolve/resolv.conf /etc/resolv.conf; do
		[[ -r "${f}" ]] || continue
		while read -r key addr _; do
			[[ "${key}" == nameserver && "${addr}" =~ ^[0-9.]+$ && "${addr}" != 127.* ]] && servers+=("${addr}")
		done <"${f}"
		((${#servers[@]})) && break
	done
	((${#servers[@]})) || servers=(1.1.1.1 8.8.8.8)
	local IFS=,
	printf '%s\n' "${servers[*]}"
}

# --- 5. Manifests.
write_manifests() {
	local stamp
	stamp="$(date +%Y%m%d-%H%M%S)"
	cat >"${OUT_DIR}/namespace.yaml" <<'YAML'
apiVersion: v1
kind: Namespace
metadata:
  name: dc-simulator
YAML
	cp "${REPO}/config/samples/server-worker.yaml" "${OUT_DIR}/server.yaml"
	# Every substituted value was validated above and holds no sed metacharacters.
	sed -e "s|__HOST_IP__|${HOST_IP}|g" -e "s|__TOKEN__|${TOKEN}|g" -e "s|__CA_CERT_HASH__|${CA_HASH}|g" \
		-e "s|__K8S_MINOR__|${K8S_MINOR}|g" -e "s|__CONTROL_PLANE_HOST__|${CLUSTER_NAME}-control-plane|g" \
		"${REPO}/config/samples/provisioningprofile-k8s-worker.yaml" >"${OUT_DIR}/provisioningprofile-k8s-worker.yaml"
	chmod 0600 "${OUT_DIR}/provisioningprofile-k8s-worker.yaml" # it carries the join token
	cat >"${OUT_DIR}/operation.yaml" <<YAML
# A new Operation each time setup-demo.sh runs: a finished Operation never runs again.
apiVersion: stargate.io/v1alpha1
kind: Operation
metadata:
  name: repave-k8s-worker-1-${stamp}
  namespace: dc-simulator
spec:
  operation: repave
  serverRef:
    name: k8s-worker-1
  provisioningProfileRef:
    name: k8s-worker
  timeout: 30m
YAML
	kind get kubeconfig --name "${CLUSTER_NAME}" >"${OUT_DIR}/kubeconfig"
	chmod 0600 "${OUT_DIR}/kubeconfig"
	detect_dns >"${OUT_DIR}/dns"
	printf 'kubeadm join %s:6443 --token %s --discovery-token-ca-cert-hash %s\n' "${HOST_IP}" "${TOKEN}" "${CA_HASH}" >"${OUT_DIR}/join-command"
	chmod 0600 "${OUT_DIR}/join-command"
	# Run with sudo: hand the files to the invoking user, who applies them with kubectl.
	if [[ -n "${SUDO_UID:-}" && -n "${SUDO_GID:-}" ]]; then
		chown -R "${SUDO_UID}:${SUDO_GID}" "${OUT_DIR}"
	fi
}

main() {
	check_prerequisites
	HOST_IP="$(detect_host_ip)"
	[[ "${HOST_IP}" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "host IP '${HOST_IP}' is not an IPv4 address"
	[[ "${HOST_IP}" != 127.* ]] || die "host IP ${HOST_IP} is a loopback address, unreachable from VMs: pass --host-ip"
	[[ "${HOST_IP}" != 192.168.100.* ]] || die "host IP ${HOST_IP} is inside the simulator subnet 192.168.100.0/24: pass --host-ip with the uplink address"
	mkdir -p "${OUT_DIR}"
	chmod 0700 "${OUT_DIR}"
	log "host IP: ${HOST_IP}"
	ensure_cluster
	join_parameters
	write_manifests
	log "ready: Kubernetes v${K8S_MINOR} in kind cluster ${CLUSTER_NAME}, API server at ${HOST_IP}:6443"
	cat >&2 <<DONE
    manifests in ${OUT_DIR}: namespace.yaml server.yaml provisioningprofile-k8s-worker.yaml operation.yaml
    next: make build && kubectl apply -f config/crd/bases/ -f config/rbac/namespace.yaml
          kubectl apply -f ${OUT_DIR}/namespace.yaml -f ${OUT_DIR}/server.yaml -f ${OUT_DIR}/provisioningprofile-k8s-worker.yaml
          sudo ./bin/simulator --kubeconfig ${OUT_DIR}/kubeconfig --dns \$(cat ${OUT_DIR}/dns)
          kubectl apply -f ${OUT_DIR}/operation.yaml
DONE
}

main
