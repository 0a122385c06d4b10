#!/usr/bin/env bash
# e2e.sh is the offline end-to-end proof of the simulator: a real repave makes a real QEMU VM join a real
# Kubernetes control plane as a Ready worker Node, a second repave replaces that Node, and deleting the
# Server leaves nothing behind.
#
#   sudo hack/e2e.sh
#
# Everything happens inside a network namespace this script creates (stargate-e2e-<pid>) and deletes: the
# local control plane (scripts/local-cluster.sh, STATE_DIR in a temporary directory), bin/simulator (bridge
# stargate-br0 192.168.100.1/24, taps, NAT rules, VMs under TCG), kubectl. Nothing changes in the host's own
# network namespace and no traffic leaves the namespace.
#
# Steps and assertions:
#   1. local cluster up; Stargate CRDs; simulator started; namespace, Server worker-1 (2 CPUs, 2Gi, 10Gi disk),
#      the rendered k8s-worker-local profile.
#   2. Operation repave-1: Succeeded (condition Succeeded=True); Server Ready with an IP that answers ping;
#      Node worker-1 exists, is Ready and has that IP as InternalIP; it did not wait for a golden image: it ran
#      the profile's installation itself (ImageReady Cached, "runs the profile's installation itself") while the
#      golden image was baked in the background, which then ends with one golden image and no bake left.
#      A FaultInjection's NodeFlapping (90 s) struck it once the Node was Ready: the Node goes NotReady
#      ("Kubelet stopped posting node status"), then Ready again (hack/e2e-nodefaults.sh).
#   3. Operation repave-2 of the same Server (the flapping deleted): Succeeded; same IP (answers ping), new
#      instance-id; Node worker-1 Ready again with a different UID (the old Node was replaced); one QEMU process
#      and one tap; it booted the golden image (ImageReady GoldenImage). Then KubeletStops, injected into it,
#      makes the Node NotReady for good.
#   4. Delete the Server: within 2 minutes it is gone, with no QEMU process for the work dir, no sg-* tap,
#      no VM files, no IP allocation and no QMP socket left.
#   5. A namespace with three Servers repaving is deleted once two VMs run: the namespace goes, and no QEMU
#      process, tap, VM file, IP allocation or QMP socket is left.
#   6. Redfish (hack/e2e-redfish.sh): a blank machine behind the simulator's BMC is installed by the Redfish
#      datacenter controller through the BMC's virtual CD with the same profile, and its Node joins; deleting
#      the Redfish Server forgets the machine, deleting the hardware Server removes it. It starts after 1
#      and is checked after 3 (it runs while the node faults wait for the cluster), before 4 and 5.
#   Then a table of how long each step of each Operation took (condition lastTransitionTime - startTime).
# On failure: the last 40 lines of the VM console, the simulator log tail and the Operations as YAML.
# Always: the simulator, VMs and control plane are stopped, the namespace and temporary files removed.
#
# Needs: root, `make build` (bin/simulator), `make kube-binaries`, the guest image (`make guest-image`),
# qemu-system-x86 qemu-utils iptables iputils-ping iproute2 curl openssl python3.
# Environment: STARGATE_GUEST_IMAGE (default: hack/guest-image/build.sh), KUBE_BIN_DIR (default:
# hack/kube-binaries.sh all), SIMULATOR (default: bin/simulator), E2E_OP_TIMEOUT (seconds per repave, default 900), E2E_KEEP=1 keeps the
# temporary directory (logs, consoles) for inspection.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/.." && pwd)"
readonly HERE REPO
readonly NS_PREFIX=stargate-e2e-
readonly NS="${NS_PREFIX}$$"
readonly NAMESPACE=dc-simulator
readonly SERVER=worker-1
readonly BRIDGE=stargate-br0
readonly OP_TIMEOUT="${E2E_OP_TIMEOUT:-900}"
readonly DELETE_TIMEOUT=120
readonly T0="${SECONDS}"
PASSED=0

LOG_TAG=e2e LOG_CLOCK=1 DIE_WORD=FAIL
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"

# shellcheck source=hack/e2e-redfish.sh
source "${HERE}/e2e-redfish.sh"
# shellcheck source=hack/e2e-nodefaults.sh
source "${HERE}/e2e-nodefaults.sh"

# --- preconditions --------------------------------------------------------------------------------
[[ "$(id -u)" == 0 ]] || die "run as root: the test creates a network namespace, a bridge, taps and VMs (sudo $0)"
[[ "${OP_TIMEOUT}" =~ ^[0-9]+$ ]] || die "E2E_OP_TIMEOUT=${OP_TIMEOUT}: want seconds"
readonly SIMULATOR="${SIMULATOR:-${REPO}/bin/simulator}"
[[ -x "${SIMULATOR}" ]] || die "${SIMULATOR} is missing: run \`make build\`"
for tool in ip ping qemu-system-x86_64 qemu-img iptables curl timeout; do
	command -v "${tool}" >/dev/null ||
		die "${tool} not found: apt-get install iproute2 iputils-ping qemu-system-x86 qemu-utils iptables curl coreutils"
done
KUBE_BIN_DIR="${KUBE_BIN_DIR:-$("${REPO}/hack/kube-binaries.sh" all)}"
readonly KUBE_BIN_DIR
export KUBE_BIN_DIR
readonly KUBECTL="${KUBE_BIN_DIR}/kubectl"
[[ -x "${KUBECTL}" ]] || die "kubectl missing in ${KUBE_BIN_DIR}: run \`make kube-binaries\`"
IMAGE="${STARGATE_GUEST_IMAGE:-$("${REPO}/hack/guest-image/build.sh")}"
readonly IMAGE
[[ -f "${IMAGE}" ]] || die "guest image ${IMAGE} not found: run \`make guest-image\`"

TMP="$(mktemp -d /tmp/stargate-e2e.XXXXXX)"
readonly TMP
export STATE_DIR="${TMP}/cluster"
WORK_DIR="${TMP}/work"
readonly WORK_DIR
readonly SIM_LOG="${TMP}/simulator.log"
# Where the simulator keeps the VM's files: it prints its own layout (bin/simulator paths).
if ! CONSOLE="$(vm_path console "${NAMESPACE}" "${SERVER}")" || ! SERVER_TAP="$(vm_path tap "${NAMESPACE}" "${SERVER}")" || ! VMS_DIR="$(sim_path vms_dir)" ||
	! IPAM_DIR="$(sim_path ipam_dir)" || ! RUN_DIR="$(sim_path run_dir)" ||
	! GOLDEN_DIR="$(sim_path golden_dir)" || ! BAKES_DIR="$(sim_path bakes_dir)"; then
	rm -rf -- "${TMP}"
	exit 1
fi
readonly CONSOLE SERVER_TAP VMS_DIR IPAM_DIR RUN_DIR
SIM_PID=""
NS_CREATED=""
KCFG=""

in_ns() { ip netns exec "${NS}" "$@"; }
k() { in_ns "${KUBECTL}" --kubeconfig "${KCFG}" --request-timeout=30s "$@"; }
kn() { k -n "${NAMESPACE}" "$@"; }

# qemu_pids prints the PIDs of QEMU processes that belong to this test's work directory.
qemu_pids() {
	local p cmd
	for p in /proc/[0-9]*; do
		cmd="$(tr '\0' ' ' 2>/dev/null <"${p}/cmdline")" 2>/dev/null || continue # the process may just have exited
		[[ "${cmd}" == qemu-system* && "${cmd}" == *"${WORK_DIR}/"* ]] && printf '%s\n' "${p#/proc/}"
	done
	return 0
}

# vm_qemu_pids DIR: those of them that run the VM whose files are in DIR.
vm_qemu_pids() {
	local p
	for p in $(qemu_pids); do
		grep -qzF "$1/" "/proc/${p}/cmdline" 2>/dev/null && printf '%s\n' "${p}"
	done
	return 0
}

# kill_wait SIGNAL_GRACE_SECONDS PID...: SIGTERM, then SIGKILL after the grace period.
kill_wait() {
	local grace="$1" pid i alive
	shift
	(($# == 0)) && return 0
	kill -TERM "$@" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		alive=0
		for pid in "$@"; do
			# Exited but not yet reaped (zombie) counts as gone.
			[[ -r "/proc/${pid}/status" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/${pid}/status" 2>/dev/null && alive=1
		done
		((alive)) || return 0
		sleep 0.1
	done
	kill -KILL "$@" 2>/dev/null || true
}

diagnostics() {
	printf '\n===== diagnostics =====\n' >&2
	if [[ -f "${CONSOLE}" ]]; then
		printf -- '--- last 40 lines of the VM console (%s) ---\n' "${CONSOLE}" >&2
		tail -n 40 "${CONSOLE}" | sed -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\r//g' >&2 || true
	else
		printf -- '--- no VM console at %s ---\n' "${CONSOLE}" >&2
	fi
	redfish_diagnostics
	if [[ -f "${SIM_LOG}" ]]; then
		printf -- '--- last 40 lines of the simulator log (%s) ---\n' "${SIM_LOG}" >&2
		tail -n 40 "${SIM_LOG}" >&2 || true
	fi
	if [[ -n "${KCFG}" ]]; then
		printf -- '--- kubectl get operation -n %s -o yaml ---\n' "${NAMESPACE}" >&2
		kn get operation -o yaml >&2 2>&1 || true
		printf -- '--- servers and nodes ---\n' >&2
		kn get servers -o wide >&2 2>&1 || true
		k get nodes -o wide >&2 2>&1 || true
	fi
	printf '===== end of diagnostics =====\n\n' >&2
}

cleanup() {
	local rc=$?
	trap - EXIT
	trap '' INT TERM HUP # cleanup is bounded: let it finish
	set +e
	((rc == 0)) || diagnostics
	log "cleaning up"
	if [[ -n "${SIM_PID}" ]]; then kill_wait 15 "${SIM_PID}"; fi
	if [[ -n "${RF_PID}" ]]; then kill_wait 15 "${RF_PID}"; fi
	# The control plane before the VMs: kube-apiserver shuts down at once while its kubelets are alive to
	# close their connections, but waits up to a minute for those of VMs that were killed.
	if [[ -n "${NS_CREATED}" ]]; then
		timeout 90 ip netns exec "${NS}" "${REPO}/scripts/local-cluster.sh" down 2>>"${TMP}/local-cluster-down.log" ||
			log "WARNING: local-cluster down failed: $(tail -n 3 "${TMP}/local-cluster-down.log")"
	fi
	# QEMU daemonizes: its VMs outlive the simulator.
	# shellcheck disable=SC2046 # one PID per word
	kill_wait 10 $(qemu_pids)
	log "simulator, control plane and VMs stopped"
	if [[ -n "${NS_CREATED}" ]]; then
		# Whatever still runs in the namespace was started by this script (nothing else can enter it).
		# shellcheck disable=SC2046
		kill_wait 5 $(ip netns pids "${NS}" 2>/dev/null)
		ip netns delete "${NS}" || log "WARNING: could not delete network namespace ${NS}"
	fi
	if [[ "${E2E_KEEP:-}" == 1 ]]; then
		log "kept ${TMP} (E2E_KEEP=1)"
	else
		rm -rf --one-file-system -- "${TMP}"
	fi
	if ((rc == 0)); then log "PASS (total $((SECONDS - T0)) s)"; else log "FAILED (exit ${rc}, total $((SECONDS - T0)) s)"; fi
	# The closing line CI reads: scenarios (first repave, second repave, deletion) passed and failed.
	printf 'e2e: %d passed, %d failed\n' "${PASSED}" "$((rc == 0 ? 0 : 1))"
	exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Namespaces of e2e runs killed hard (their creator PID is gone): their processes were started by such a run.
remove_stale_namespaces() {
	local ns pid
	for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
		[[ "${ns}" == "${NS_PREFIX}"* ]] || continue
		pid="${ns#"${NS_PREFIX}"}"
		[[ "${pid}" =~ ^[0-9]+$ ]] || continue
		kill -0 "${pid}" 2>/dev/null && continue
		log "removing stale network namespace ${ns}"
		# shellcheck disable=SC2046
		kill_wait 5 $(ip netns pids "${ns}" 2>/dev/null)
		ip netns delete "${ns}" || true
	done
}

# --- helpers for the assertions -------------------------------------------------------------------
# wait_op NAME: poll until the Operation is final (at most OP_TIMEOUT s), printing its progress; fail
# unless it Succeeded, or when the simulator exits meanwhile.
wait_op() { wait_operation "${NAMESPACE}" "$1" "${OP_TIMEOUT}" "${SIM_PID}"; }

create_operation() { # create_operation NAME [PROFILE]
	local name="$1" profile="${2:-k8s-worker-local}"
	kn apply -f - >/dev/null <<EOF
apiVersion: stargate.io/v1alpha1
kind: Operation
metadata:
  name: ${name}
  namespace: ${NAMESPACE}
spec:
  operation: repave
  serverRef: {name: ${SERVER}}
  provisioningProfileRef: {name: ${profile}}
  timeout: 20m
EOF
}

op_seconds() { # op_seconds OP [NAMESPACE]: created → completed, in seconds
	local c d ns="${2:-${NAMESPACE}}"
	c="$(k -n "${ns}" get operation "$1" -o 'jsonpath={.metadata.creationTimestamp}')"
	d="$(k -n "${ns}" get operation "$1" -o 'jsonpath={.status.completionTime}')"
	echo $(($(date -d "${d}" +%s) - $(date -d "${c}" +%s)))
}

server_field() { kn get server "${SERVER}" -o "jsonpath={${1}}"; }
node_field() { k get node "${SERVER}" -o "jsonpath={${1}}"; }

# assert_installed OP: the Server is Ready at an address that answers; its Node is Ready with that address.
# Sets IP, NODE_UID, INSTANCE.
assert_installed() {
	local op="$1" state ready internal cidr
	state="$(server_field .status.state)"
	IP="$(server_field .status.ipAddress)"
	INSTANCE="$(server_field .status.instanceID)"
	[[ "${state}" == Ready ]] || die "after ${op}: Server state is '${state}', want Ready ($(server_field .status.message))"
	[[ "${IP}" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "after ${op}: Server has no IPv4 address ('${IP}')"
	[[ "$(server_field .status.lastOperation)" == "${op}" ]] || die "after ${op}: Server's lastOperation is not ${op}"
	in_ns ping -c 3 -W 2 "${IP}" >/dev/null || die "after ${op}: ${IP} does not answer ping from ${NS}"
	NODE_UID="$(node_field .metadata.uid)" || die "after ${op}: Node ${SERVER} does not exist"
	ready="$(node_field '.status.conditions[?(@.type=="Ready")].status')"
	[[ "${ready}" == True ]] || die "after ${op}: Node ${SERVER} is not Ready (Ready=${ready:-<none>})"
	internal="$(node_field '.status.addresses[?(@.type=="InternalIP")].address')"
	[[ "${internal}" == "${IP}" ]] || die "after ${op}: Node ${SERVER} has InternalIP '${internal}', want the Server's ${IP}"
	# The pod network: containerd renders the CNI config from this podCIDR (the Node is Ready only with it).
	cidr="$(node_field .spec.podCIDR)"
	[[ -n "${cidr}" ]] || die "after ${op}: Node ${SERVER} has no podCIDR"
	log "  ${op}: Server ${SERVER} Ready at ${IP} (answers ping); Node ${SERVER} Ready, uid ${NODE_UID}, podCIDR ${cidr}"
}

# assert_image OP REASON [TEXT]: the Operation's ImageReady reason is REASON, and its message holds TEXT.
assert_image() {
	local op="$1" want="$2" text="${3:-}" reason msg
	reason="$(kn get operation "${op}" -o 'jsonpath={.status.conditions[?(@.type=="ImageReady")].reason}')"
	msg="$(kn get operation "${op}" -o 'jsonpath={.status.conditions[?(@.type=="ImageReady")].message}')"
	[[ "${reason}" == "${want}" ]] || die "${op}: ImageReady reason '${reason}', want ${want}: ${msg}"
	[[ "${msg}" == *"${text}"* ]] || die "${op}: ImageReady's message does not say '${text}': ${msg}"
	log "  ${op}: ImageReady ${reason}: ${msg}"
}

# await_golden_image: wait until the background bake ended with one golden image and no bake left.
await_golden_image() {
	local deadline=$((SECONDS + OP_TIMEOUT)) golden bakes
	while :; do
		golden="$(find "${GOLDEN_DIR}" -maxdepth 1 -name '*.qcow2' ! -name '.*' 2>/dev/null | wc -l)"
		bakes="$(find "${BAKES_DIR}" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
		((golden == 1 && bakes == 0)) && break
		((SECONDS < deadline)) || die "the golden image bake did not end within ${OP_TIMEOUT} s: ${golden} golden images, ${bakes} bakes (simulator log: ${SIM_LOG})"
		sleep 2
	done
	log "  the golden image was baked in the background: $(find "${GOLDEN_DIR}" -maxdepth 1 -name '*.qcow2' -printf '%f %s bytes')"
}

# record OP: keep what the timing table needs beyond the Operation's own conditions (the Node and the
# console change with the next repave).
record() {
	local op="$1"
	kn get operation "${op}" -o 'jsonpath={.status.startTime}' >"${TMP}/${op}.start"
	node_field '.status.conditions[?(@.type=="Ready")].lastTransitionTime' >"${TMP}/${op}.KubeletReady"
	grep -a '\[stargate-k8s\]' "${CONSOLE}" | sed 's/\r//g' >"${TMP}/${op}.console-markers" || true
}

since_start() { # since_start OP FILE-SUFFIX: seconds from the Operation's start to the recorded time
	local start t
	start="$(<"${TMP}/$1.start")"
	t="$(<"${TMP}/$1.$2")"
	if [[ -z "${start}" || -z "${t}" ]]; then
		printf -- '-'
		return
	fi
	printf '%d' "$(($(date -d "${t}" +%s) - $(date -d "${start}" +%s)))"
}

timing_table() {
	local op
	# Each Operation's conditions, from its status.startTime (NodeReady/Succeeded are only evaluated
	# once cloud-init finished).
	operation_table "${NAMESPACE}" "$@"
	printf '\nNode %s Ready (the kubelet'"'"'s own Ready time), seconds from each Operation'"'"'s start:' "${SERVER}"
	for op in "$@"; do printf ' %s %s' "${op}" "$(since_start "${op}" KubeletReady)"; done
	printf '\n'
	for op in "$@"; do
		printf '\n%s, guest markers (seconds of guest uptime):\n' "${op}"
		sed 's/^/  /' "${TMP}/${op}.console-markers"
	done
	printf '\ne2e phases (wall clock, seconds): %s\n' "${PHASES[*]}"
}

# --- the test -------------------------------------------------------------------------------------
PHASES=()
phase_done() { # phase_done NAME START
	PHASES+=("$1=$((SECONDS - $2))")
}

remove_stale_namespaces
log "network namespace ${NS}, temporary directory ${TMP}, guest image ${IMAGE}"
ip netns add "${NS}"
NS_CREATED=1
in_ns ip link set lo up

t="${SECONDS}"
timeout 180 ip netns exec "${NS}" "${REPO}/scripts/local-cluster.sh" up 2>"${TMP}/local-cluster-up.log" || {
	cat "${TMP}/local-cluster-up.log" >&2
	die "scripts/local-cluster.sh up failed"
}
KCFG="$(in_ns "${REPO}/scripts/local-cluster.sh" kubeconfig-path)"
phase_done cluster-up "${t}"
log "local cluster up in $((SECONDS - t)) s"

k apply --server-side -f "${REPO}/config/crd/bases/" >/dev/null
# The hosts' Leases live in stargate-system (--lease-namespace).
k apply -f "${REPO}/config/rbac/namespace.yaml" >/dev/null
k wait --for=condition=Established crd/servers.stargate.io crd/provisioningprofiles.stargate.io \
	crd/operations.stargate.io --timeout=60s >/dev/null

t="${SECONDS}"
mapfile -t SIM_REDFISH_FLAGS < <(redfish_simulator_flags)
# --image-dir: the profile names the guest image by a file:// URL, which the simulator reads only
# below the directories it is given.
ip netns exec "${NS}" "${SIMULATOR}" --kubeconfig "${KCFG}" --accel tcg --work-dir "${WORK_DIR}" \
	--image-dir "$(dirname "${IMAGE}")" \
	--metrics-bind-address 0 --health-probe-bind-address 0 --poll-interval 2s "${SIM_REDFISH_FLAGS[@]}" >"${SIM_LOG}" 2>&1 &
SIM_PID=$!
deadline=$((SECONDS + 60))
until in_ns ip link show "${BRIDGE}" >/dev/null 2>&1 && grep -q '"Starting workers"' "${SIM_LOG}"; do
	kill -0 "${SIM_PID}" 2>/dev/null || die "the simulator exited at start: $(tail -n 5 "${SIM_LOG}")"
	((SECONDS < deadline)) || die "the simulator did not start within 60 s (log: ${SIM_LOG})"
	sleep 0.5
done
phase_done simulator-start "${t}"
log "simulator running (pid ${SIM_PID}), bridge ${BRIDGE} up"

k apply -f "${REPO}/config/samples/namespace.yaml" >/dev/null
kn apply -f - >/dev/null <<EOF
apiVersion: stargate.io/v1alpha1
kind: Server
metadata:
  name: ${SERVER}
  namespace: ${NAMESPACE}
spec:
  cpus: 2
  memory: 2Gi
  disk: 10Gi
EOF
timeout 60 ip netns exec "${NS}" "${REPO}/scripts/local-cluster.sh" profile "${IMAGE}" >"${TMP}/profile.yaml"
kn apply -f "${TMP}/profile.yaml" >/dev/null

# 1. First repave: a new worker joins. A NodeFlapping fault (90 s) strikes it once its Node is Ready.
node_fault flap NodeFlapping 90s
log "repave-1: creating the Operation (boot + join of a VM under TCG: 1-3 minutes, more on a busy host)"
t="${SECONDS}"
create_operation repave-1
wait_op repave-1
phase_done repave-1 "${t}"
assert_installed repave-1
# The first repave runs the profile's installation itself; its golden image is baked in the
# background and booted by the second.
assert_image repave-1 Cached "runs the profile's installation itself"
record repave-1
# 6 starts here: a real server installed through its BMC (hack/e2e-redfish.sh), while the checks
# below mostly wait for the cluster's grace periods; redfish_finish checks it after them.
redfish_start
t="${SECONDS}"
assert_node_fault repave-1 NodeFlapping
log "  repave-1: the flap ended, Node ${SERVER} Ready again: $(wait_node_ready True 180)"
phase_done node-flap "${t}"
t="${SECONDS}"
await_golden_image
phase_done bake-wait "${t}"
PASSED=$((PASSED + 1))
first_ip="${IP}" first_uid="${NODE_UID}" first_instance="${INSTANCE}"

# 2. Second repave of the same Server: a fresh install replaces the Node, keeps the address. The
# flapping is deleted (the installation it struck is replaced anyway); KubeletStops strikes this one.
kn delete faultinjection flap >/dev/null
node_fault kubelet-stops KubeletStops
log "repave-2: creating the Operation"
t="${SECONDS}"
create_operation repave-2
wait_op repave-2
phase_done repave-2 "${t}"
assert_installed repave-2
assert_image repave-2 GoldenImage
record repave-2
[[ "${IP}" == "${first_ip}" ]] || die "repave-2 changed the Server's IP from ${first_ip} to ${IP}"
[[ "${INSTANCE}" != "${first_instance}" ]] || die "repave-2 kept the instance-id ${INSTANCE}: not a fresh install"
[[ "${NODE_UID}" != "${first_uid}" ]] ||
	die "Node ${SERVER} still has uid ${first_uid} after repave-2: the previous installation's Node was not replaced"
# One VM and one tap for the Server (the Redfish scenario's blank machine has its own).
n="$(vm_qemu_pids "$(dirname "${CONSOLE}")" | wc -l)"
((n == 1)) || die "after repave-2: ${n} QEMU processes for ${SERVER}, want 1"
n="$(in_ns ip -o link show | grep -c ': sg-')" || true
((n == 2)) || die "after repave-2: ${n} sg-* taps, want 2 (${SERVER}'s and the blank machine's)"
in_ns ip link show "${SERVER_TAP}" >/dev/null || die "after repave-2: ${SERVER}'s tap ${SERVER_TAP} is gone"
log "  repave-2: same IP ${IP}, new instance, Node replaced (uid ${first_uid} -> ${NODE_UID}), one VM, one tap"
t="${SECONDS}"
assert_node_fault repave-2 KubeletStops
kn delete faultinjection kubelet-stops >/dev/null
phase_done kubelet-stops "${t}"
PASSED=$((PASSED + 1))

# 6 ends here: the Redfish repave started after repave-1 (hack/e2e-redfish.sh).
redfish_finish

# The join benchmark (make bench: E2E_BENCH_JOIN=1): the same profile without a golden image — its
# installation merged into the per-instance user-data, so every repave installs everything — against
# repave-2, which booted the golden image. Both durations are the Operation's, created → Succeeded.
if [[ "${E2E_BENCH_JOIN:-}" == 1 ]]; then
	python3 - "${TMP}/profile.yaml" >"${TMP}/profile-plain.yaml" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
inst = yaml.safe_load(p["spec"].pop("installation")["cloudInit"])
own = yaml.safe_load(p["spec"]["cloudInit"])
for k, v in inst.items():  # lists: the installation's first; anything else: the per-instance part wins
    own[k] = v + own.get(k, []) if isinstance(v, list) else own.get(k, v)
p["metadata"]["name"] += "-plain"
p["spec"]["cloudInit"] = "#cloud-config\n" + yaml.safe_dump(own, sort_keys=False, width=1000)
yaml.safe_dump(p, sys.stdout, sort_keys=False, width=1000)
PY
	kn apply -f "${TMP}/profile-plain.yaml" >/dev/null
	log "bench: repave-plain, the same profile without a golden image"
	t="${SECONDS}"
	create_operation repave-plain k8s-worker-local-plain
	wait_op repave-plain
	phase_done repave-plain "${t}"
	assert_installed repave-plain
	assert_image repave-plain Cached
	record repave-plain
	golden_s="$(op_seconds repave-2)" plain_s="$(op_seconds repave-plain)"
	for op in repave-1 repave-2 repave-plain; do
		log "  ${op} timeline: $(kn get operation "${op}" -o 'jsonpath={range .status.timeline[*]}{.name}={.duration} {end}')"
	done
	log "BENCH join: golden ${golden_s} s, without golden ${plain_s} s, ratio $(python3 -c "print(round(${golden_s}/${plain_s}, 2))") (goal <= 0.6)"
fi

# leftovers: fills the array `left` with what the simulator still holds on this host (QEMU processes,
# taps, VM files, IP allocations, QMP sockets).
leftovers() {
	left=()
	[[ -z "$(qemu_pids)" ]] || left+=("QEMU process $(qemu_pids | tr '\n' ' ')")
	local taps vmfiles ipfiles sockets
	taps="$(in_ns ip -o link show | awk -F': ' '$2 ~ /^sg-/ {print $2}' | cut -d@ -f1 | tr '\n' ' ')"
	[[ -z "${taps}" ]] || left+=("taps ${taps}")
	vmfiles="$(find "${VMS_DIR}" -mindepth 1 2>/dev/null | head -n 5 | tr '\n' ' ')"
	[[ -z "${vmfiles}" ]] || left+=("VM files ${vmfiles}")
	ipfiles="$(find "${IPAM_DIR}" -type f -regextype posix-extended -regex '.*/[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' 2>/dev/null | tr '\n' ' ')"
	[[ -z "${ipfiles}" ]] || left+=("IP allocations ${ipfiles}")
	sockets="$(find "${RUN_DIR}" -name '*.qmp' 2>/dev/null | tr '\n' ' ')"
	[[ -z "${sockets}" ]] || left+=("QMP sockets ${sockets}")
}

# 3. Deleting the Server releases everything.
log "deleting Server ${SERVER}"
t="${SECONDS}"
kn delete server "${SERVER}" --wait=false >/dev/null
deadline=$((SECONDS + DELETE_TIMEOUT))
while :; do
	leftovers
	kn get server "${SERVER}" >/dev/null 2>&1 && left+=("Server object")
	k get node "${SERVER}" >/dev/null 2>&1 && left+=("Node ${SERVER}")
	((${#left[@]} == 0)) && break
	((SECONDS < deadline)) || die "${DELETE_TIMEOUT} s after deleting Server ${SERVER}, still left: ${left[*]}"
	sleep 1
done
phase_done delete "${t}"
log "  Server deleted in $((SECONDS - t)) s: no QEMU process, tap, VM file, IP allocation, QMP socket or Node left"
PASSED=$((PASSED + 1))

# 4. A namespace deleted while its Servers install: the real namespace controller deletes them and
# their Operations; the simulator releases every VM, tap, address and file.
readonly DOOMED=e2e-doomed
log "namespace ${DOOMED}: three Servers repaving, then the namespace is deleted"
t="${SECONDS}"
k create namespace "${DOOMED}" >/dev/null
k -n "${DOOMED}" apply -f - >/dev/null <<EOF
apiVersion: stargate.io/v1alpha1
kind: ProvisioningProfile
metadata: {name: hello}
spec:
  image: {url: "file://${IMAGE}"}
  cloudInit: |
    #cloud-config
    runcmd: [[sh, -c, 'echo hello']]
EOF
for i in 1 2 3; do
	k -n "${DOOMED}" apply -f - >/dev/null <<EOF
apiVersion: stargate.io/v1alpha1
kind: Server
metadata: {name: doomed-${i}}
spec: {cpus: 1, memory: 1Gi, disk: 4Gi}
---
apiVersion: stargate.io/v1alpha1
kind: Operation
metadata: {name: repave-doomed-${i}}
spec: {operation: repave, serverRef: {name: doomed-${i}}, provisioningProfileRef: {name: hello}}
EOF
done
deadline=$((SECONDS + 300))
until (($(qemu_pids | wc -l) >= 2)); do # --max-parallel 2: two install, the third waits
	((SECONDS < deadline)) || die "no two VMs of ${DOOMED} started within 300 s"
	sleep 1
done
k delete namespace "${DOOMED}" --wait=false >/dev/null
deadline=$((SECONDS + DELETE_TIMEOUT))
while :; do
	leftovers
	k get namespace "${DOOMED}" >/dev/null 2>&1 && left+=("namespace ${DOOMED}")
	((${#left[@]} == 0)) && break
	((SECONDS < deadline)) || die "${DELETE_TIMEOUT} s after deleting namespace ${DOOMED}, still left: ${left[*]}"
	sleep 1
done
phase_done delete-namespace "${t}"
log "  namespace ${DOOMED} deleted mid-install: no QEMU process, tap, VM file, IP allocation or QMP socket left"
PASSED=$((PASSED + 1))

timing_table repave-1 repave-2
