#!/usr/bin/env bash
# demo.sh performs the whole Demo Flow of the brief with one command and reports how long each
# phase took:
#
#   sudo scripts/demo.sh run     # (what `sudo make demo` runs)
#   sudo scripts/demo.sh clean   # (what `sudo make demo-clean` runs) removes VMs, taps, bridge, NAT
#                                # rules, the cluster and the files; keeps the image cache
#
# Where Docker and kind work, the cluster is a kind cluster on this host's IP and the worker is
# Ubuntu 22.04 installed from the internet (scripts/setup-demo.sh). Where they do not (such as
# build machines without a Docker engine), it uses the embedded local cluster
# (scripts/local-cluster.sh) and the offline Debian image, everything inside a network namespace
# of its own (stargate-demo) so the host's network is not touched; it says so.
#
# Environment: DEMO_MODE=kind|local (default: detect), ACCEL (default auto with kind, tcg locally),
# OUT_DIR (default /tmp/stargate-demo), WORK_DIR (default /var/lib/stargate).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT_DIR:-/tmp/stargate-demo}"
WORK_DIR="${WORK_DIR:-/var/lib/stargate}"
NETNS=stargate-demo
NS=dc-simulator
SERVER=k8s-worker-1
TIMEOUT_SECONDS="${TIMEOUT_SECONDS:-1800}"

LOG_TAG=demo
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"

[[ "$(id -u)" == 0 ]] || die "run as root (sudo make demo): the simulator creates a bridge, taps and NAT rules"

detect_mode() {
	if [[ -n "${DEMO_MODE:-}" ]]; then
		printf '%s\n' "${DEMO_MODE}"
	elif command -v kind >/dev/null && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
		printf 'kind\n'
	else
		printf 'local\n'
	fi
}

# k runs kubectl against the demo cluster (inside the demo namespace in local mode).
k() {
	if [[ "${MODE}" == local ]]; then
		ip netns exec "${NETNS}" "${KUBECTL}" --kubeconfig "${KUBECONFIG_FILE}" "$@"
	else
		"${KUBECTL}" --kubeconfig "${KUBECONFIG_FILE}" "$@"
	fi
}

# in_demo_net runs a command where the simulator's network lives.
in_demo_net() {
	if [[ "${MODE}" == local ]]; then ip netns exec "${NETNS}" "$@"; else "$@"; fi
}

setup_kind() {
	"${REPO}/scripts/setup-demo.sh" --out-dir "${OUT_DIR}"
	KUBECONFIG_FILE="${OUT_DIR}/kubeconfig"
	KUBECTL="$(command -v kubectl)"
	PROFILE_FILE="${OUT_DIR}/provisioningprofile-k8s-worker.yaml"
	SIM_ARGS=(--accel "${ACCEL:-auto}" --dns "$(cat "${OUT_DIR}/dns")")
}

setup_local() {
	log "Docker/kind are not usable here: using the embedded local cluster and the offline Debian image,"
	log "inside network namespace ${NETNS} (the host's own network is not touched)"
	mkdir -p "${OUT_DIR}"
	chmod 0700 "${OUT_DIR}"
	local kube_bin image
	kube_bin="$("${REPO}/hack/kube-binaries.sh" all)"
	image="$("${REPO}/hack/guest-image/build.sh")"
	ip netns add "${NETNS}" 2>/dev/null || true
	ip netns exec "${NETNS}" ip link set lo up
	export STATE_DIR="${WORK_DIR}/demo-cluster" KUBE_BIN_DIR="${kube_bin}"
	ip netns exec "${NETNS}" "${REPO}/scripts/local-cluster.sh" up
	KUBECONFIG_FILE="$("${REPO}/scripts/local-cluster.sh" kubeconfig-path)"
	KUBECTL="${kube_bin}/kubectl"
	PROFILE_FILE="${OUT_DIR}/provisioningprofile-k8s-worker.yaml"
	ip netns exec "${NETNS}" "${REPO}/scripts/local-cluster.sh" profile "${image}" |
		sed -e 's/name: k8s-worker-local/name: k8s-worker/' >"${PROFILE_FILE}"
	chmod 0600 "${PROFILE_FILE}"
	printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "${NS}" >"${OUT_DIR}/namespace.yaml"
	# Smaller than the brief's 4Gi: TCG guests on a shared 2-core machine.
	cat >"${OUT_DIR}/server.yaml" <<YAML
apiVersion: stargate.io/v1alpha1
kind: Server
metadata:
  name: ${SERVER}
  namespace: ${NS}
spec:
  cpus: 2
  memory: 2Gi
  disk: 10Gi
YAML
	cat >"${OUT_DIR}/operation.yaml" <<YAML
apiVersion: stargate.io/v1alpha1
kind: Operation
metadata:
  name: repave-${SERVER}-$(date +%Y%m%d-%H%M%S)
  namespace: ${NS}
spec:
  operation: repave
  serverRef: {name: ${SERVER}}
  provisioningProfileRef: {name: k8s-worker}
YAML
	# The profile names the guest image by a file:// URL: the simulator reads files only below the
	# directories it is given with --image-dir.
	SIM_ARGS=(--accel "${ACCEL:-tcg}" --image-dir "$(dirname "${image}")")
}

start_simulator() {
	stop_simulator
	log "starting the simulator controller (log: ${OUT_DIR}/simulator.log)"
	# setsid: the simulator keeps running after this script ends; demo-clean stops it.
	in_demo_net setsid "${REPO}/bin/simulator" --kubeconfig "${KUBECONFIG_FILE}" --work-dir "${WORK_DIR}" \
		"${SIM_ARGS[@]}" >"${OUT_DIR}/simulator.log" 2>&1 </dev/null &
	echo $! >"${OUT_DIR}/simulator.pid"
	sleep 2
	kill -0 "$(cat "${OUT_DIR}/simulator.pid")" 2>/dev/null || { tail -20 "${OUT_DIR}/simulator.log" >&2; die "the simulator did not start"; }
}

stop_simulator() {
	if [[ -f "${OUT_DIR}/simulator.pid" ]]; then
		kill "$(cat "${OUT_DIR}/simulator.pid")" 2>/dev/null || true
		rm -f "${OUT_DIR}/simulator.pid"
	fi
}

run() {
	MODE="$(detect_mode)"
	START=${SECONDS}
	log "demo mode: ${MODE}"
	[[ -x "${REPO}/bin/simulator" ]] || die "bin/simulator is missing: run make build (make demo does)"
	if [[ "${MODE}" == kind ]]; then setup_kind; else setup_local; fi
	printf '%s\n' "${MODE}" >"${OUT_DIR}/mode"
	log "installing the CRDs and the demo resources"
	k apply -f "${REPO}/config/crd/bases/" -f "${REPO}/config/rbac/namespace.yaml" >/dev/null
	k wait --for=condition=Established crd --all --timeout=60s >/dev/null
	k apply -f "${OUT_DIR}/namespace.yaml" -f "${OUT_DIR}/server.yaml" -f "${PROFILE_FILE}"
	start_simulator
	local op
	op="$(k create -f "${OUT_DIR}/operation.yaml" -o jsonpath='{.metadata.name}')"
	log "repaving ${SERVER} with Operation ${op} (kubectl get operations -n ${NS} -w shows the same)"
	wait_operation "${NS}" "${op}" "${TIMEOUT_SECONDS}"
	log "done in $((SECONDS - START))s"
	k -n "${NS}" get operation "${op}" -o wide
	k -n "${NS}" get servers -o wide
	k get nodes -o wide
	operation_table "${NS}" "${op}"
	local console
	console="$(vm_path console "${NS}" "${SERVER}")"
	cat >&2 <<DONE

The VM stays up. Look around with:
  $( [[ "${MODE}" == local ]] && printf 'sudo ip netns exec %s ' "${NETNS}")kubectl --kubeconfig ${KUBECONFIG_FILE} get nodes
  sudo tail -f ${console}     # the VM's serial console
Remove everything with: sudo make demo-clean
DONE
}

clean() {
	MODE="$(cat "${OUT_DIR}/mode" 2>/dev/null || detect_mode)"
	log "cleaning up the ${MODE} demo"
	if [[ "${MODE}" == local ]]; then
		KUBECTL=true
		stop_simulator
		if ip netns list | grep -qw "${NETNS}"; then
			# VMs, the simulator and the control plane all live in the namespace: end them with it.
			ip netns exec "${NETNS}" env STATE_DIR="${WORK_DIR}/demo-cluster" "${REPO}/scripts/local-cluster.sh" down || true
			for pid in $(ip netns pids "${NETNS}"); do kill -9 "${pid}" 2>/dev/null || true; done
			ip netns delete "${NETNS}"
		fi
	else
		KUBECONFIG_FILE="${OUT_DIR}/kubeconfig"
		KUBECTL="$(command -v kubectl || echo true)"
		# Deleting the Servers makes the simulator release their VMs, taps and addresses.
		if [[ -f "${OUT_DIR}/simulator.pid" ]] && kill -0 "$(cat "${OUT_DIR}/simulator.pid")" 2>/dev/null; then
			k delete servers --all -n "${NS}" --timeout=120s || true
		fi
		stop_simulator
		"${REPO}/bin/simulator" --teardown --work-dir "${WORK_DIR}" || true
		kind delete cluster --name "${CLUSTER_NAME:-stargate}" 2>/dev/null || true
	fi
	local vms ipam run bakes images golden
	vms="$(sim_path vms_dir)"
	ipam="$(sim_path ipam_dir)"
	run="$(sim_path run_dir)"
	bakes="$(sim_path bakes_dir)"
	images="$(sim_path images_dir)"
	golden="$(sim_path golden_dir)"
	rm -rf "${vms}" "${ipam}" "${run}" "${bakes}" "${WORK_DIR}/demo-cluster" "${OUT_DIR}"
	log "clean (the image caches in ${images} and ${golden} are kept; remove them by hand to free space)"
}

case "${1:-run}" in
run) run ;;
clean) clean ;;
*) die "usage: $0 run|clean" ;;
esac
