# shellcheck shell=bash
# e2e-redfish.sh is the Redfish part of hack/e2e.sh, which sources it: a real server that has nothing
# but a Redfish BMC is installed through the BMC's virtual CD, end to end, and joins the cluster.
#
# The "hardware" is a blank machine of the simulator (namespace hardware, Server blank-1: a VM slot
# that was never repaved, with an empty 10 GiB disk), behind the BMC the simulator serves on
# 127.0.0.1:8443 (https, its self-signed certificate). A second controller, `bin/simulator --provider
# redfish` (host redfish-e2e, only Servers labelled stargate.io/datacenter=redfish), drives that BMC
# for Server rf-worker-1 of namespace dc-redfish: its spec.bmc names the BMC's address and system,
# the CA that verifies it and the credentials; spec.network names the blank machine's MAC and no
# address: the controller's --address-pool (192.168.100.5-192.168.100.9, outside the simulator's
# .11 up) gives it 192.168.100.5 with the pool's gateway. The Operation repaves it with
# the k8s-worker-local profile: the installer ISO (make installer-iso) is inserted and booted, the
# raw image written, the machine boots its disk, calls back, and its Node joins.
#
# Assertions: the Operation Succeeded with every step of the Redfish repave True (ImageReady,
# InstallerReady, MediaInserted, InstallerBooted, ImageWritten with a rate, BootedFromDisk,
# GuestReady, NodeReady); the BMC's certificate was verified (status.bmc.tls Verified); the Server
# is Ready at 192.168.100.5, which answers ping; Node rf-worker-1 is Ready with that InternalIP; the
# blank machine runs, its CD ejected and the one-time override used up, and its disk now holds the
# image; deleting the Redfish Server leaves the machine running (a real server is not wiped), and
# deleting the hardware Server then removes the VM.
#
# Needs what e2e.sh has set up: in_ns, k, KCFG, IMAGE, TMP, WORK_DIR, SIMULATOR, SIM_PID, BRIDGE
# address 192.168.100.1, the rendered profile ${TMP}/profile.yaml, qemu_pids, vm_qemu_pids, record
# helpers; and the installer ISO (STARGATE_INSTALLER_ISO, default hack/installer-iso/build.sh).

readonly RF_NAMESPACE=dc-redfish
readonly RF_SERVER=rf-worker-1
readonly HW_NAMESPACE=hardware
readonly HW_SERVER=blank-1
readonly HW_MAC=52:54:00:5a:00:05
readonly RF_ADDRESS=192.168.100.5
readonly BMC_LISTEN=127.0.0.1:8443
readonly INSTALLER_LISTEN=192.168.100.1:8082
RF_PID="" RF_LOG=""

rk() { k -n "${RF_NAMESPACE}" "$@"; }

# redfish_simulator_flags: the simulator's flags for this scenario: it serves BMCs, fetches virtual media from
# the Redfish controller's address on the bridge (one of this host's addresses, refused unless
# allowed), and leaves the Redfish datacenter's Servers alone.
redfish_simulator_flags() {
	printf '%s\n' --redfish-address "${BMC_LISTEN}" --allow-image-hosts "${INSTALLER_LISTEN%:*}/32" \
		--server-selector 'stargate.io/datacenter!=redfish'
}

# start_redfish_dc: the Redfish datacenter controller, in the test's network namespace.
start_redfish_dc() {
	local iso
	RF_LOG="${TMP}/redfish-dc.log"
	iso="${STARGATE_INSTALLER_ISO:-$("${REPO}/hack/installer-iso/build.sh")}"
	[[ -f "${iso}" ]] || die "installer ISO ${iso} not found: run \`make installer-iso\`"
	ip netns exec "${NS}" "${SIMULATOR}" --provider redfish --host-id redfish-e2e --kubeconfig "${KCFG}" \
		--work-dir "${TMP}/redfish-work" --server-selector stargate.io/datacenter=redfish \
		--bmc-networks "${BMC_LISTEN%:*}/32" --installer-listen "${INSTALLER_LISTEN}" \
		--address-pool 192.168.100.0/24 --address-pool-range "${RF_ADDRESS}-192.168.100.9" --address-pool-gateway 192.168.100.1 \
		--installer-url "http://${INSTALLER_LISTEN}" --installer-iso "${iso}" --image-dir "$(dirname "${IMAGE}")" \
		--metrics-bind-address 0 --health-probe-bind-address 0 --poll-interval 2s >"${RF_LOG}" 2>&1 &
	RF_PID=$!
	local deadline=$((SECONDS + 60))
	until grep -qs '"Starting workers"' "${RF_LOG}"; do
		kill -0 "${RF_PID}" 2>/dev/null || die "the Redfish datacenter controller exited at start: $(tail -n 5 "${RF_LOG}")"
		((SECONDS < deadline)) || die "the Redfish datacenter controller did not start within 60 s (log: ${RF_LOG})"
		sleep 0.5
	done
	log "Redfish datacenter controller running (pid ${RF_PID}), installer ISO ${iso}"
}

# redfish_diagnostics: what to read when the Redfish scenario failed.
redfish_diagnostics() {
	local console
	[[ -n "${RF_PID}" ]] || return 0
	console="$(vm_path console "${HW_NAMESPACE}" "${HW_SERVER}" 2>/dev/null)" || true
	if [[ -f "${console}" ]]; then
		printf -- '--- last 40 lines of the blank machine console (%s) ---\n' "${console}" >&2
		tail -n 40 "${console}" | sed -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\r//g' >&2 || true
	fi
	printf -- '--- last 40 lines of the Redfish datacenter log (%s) ---\n' "${RF_LOG}" >&2
	tail -n 40 "${RF_LOG}" >&2 || true
	printf -- '--- kubectl get operation -n %s -o yaml ---\n' "${RF_NAMESPACE}" >&2
	rk get operation -o yaml >&2 2>&1 || true
	k -n "${HW_NAMESPACE}" get server "${HW_SERVER}" -o yaml >&2 2>&1 || true
}

# op_condition OP TYPE FIELD: one field of one condition of a Redfish Operation.
op_condition() { rk get operation "$1" -o "jsonpath={.status.conditions[?(@.type==\"$2\")].$3}"; }

# await_machine TEST WANT: wait until TEST (a function) accepts the hardware Server's
# "powerState virtualMedia|bootOverride" (its status follows the machine within a machine check);
# print it. WANT says what TEST wants, for the failure message.
await_machine() {
	local deadline=$((SECONDS + 90)) hw
	while :; do
		hw="$(k -n "${HW_NAMESPACE}" get server "${HW_SERVER}" -o jsonpath='{.status.powerState} {.status.bmc.virtualMedia}|{.status.bmc.bootOverride}')"
		"$1" "${hw}" && break
		((SECONDS < deadline)) || die "the blank machine shows '${hw}' after 90 s, want $2"
		sleep 2
	done
	printf '%s' "${hw}"
}
# installed_machine: on, the CD ejected, the one-time override used up.
installed_machine() { [[ "$1" == "On |"* && "${1#*|}" != *Once* ]]; }
running_machine() { [[ "$1" == "On "* ]]; }

readonly RF_OP=rf-repave-1
RF_STARTED=""

# redfish_start: the blank machine, the Redfish controller and its Server, and the repave Operation;
# it returns once the Operation is created. The install runs while e2e.sh goes on with the
# simulator's own checks (its node faults mostly wait for the cluster's grace periods); redfish_finish
# waits for it and checks it.
redfish_start() {
	local bmc_url system
	RF_STARTED="${SECONDS}"
	start_redfish_dc

	# The hardware: a blank machine behind the simulator's BMC.
	k create namespace "${HW_NAMESPACE}" >/dev/null
	k create namespace "${RF_NAMESPACE}" >/dev/null
	# One password on both sides: the BMC checks what the Redfish controller's Secret holds.
	local password="e2e-${RANDOM}${RANDOM}${RANDOM}"
	for ns in "${HW_NAMESPACE}" "${RF_NAMESPACE}"; do
		k -n "${ns}" create secret generic bmc --type=kubernetes.io/basic-auth \
			--from-literal=username=admin --from-literal=password="${password}" >/dev/null
	done
	k -n "${HW_NAMESPACE}" apply -f - >/dev/null <<EOF
apiVersion: stargate.io/v1alpha1
kind: Server
metadata: {name: ${HW_SERVER}}
spec:
  cpus: 2
  memory: 2Gi
  disk: 10Gi
  macAddress: "${HW_MAC}"
  bmc: {credentialsSecretRef: {name: bmc}}
EOF
	local deadline=$((SECONDS + 60))
	until bmc_url="$(k -n "${HW_NAMESPACE}" get server "${HW_SERVER}" -o jsonpath='{.status.bmc.address}')" && [[ -n "${bmc_url}" ]]; do
		((SECONDS < deadline)) || die "Server ${HW_NAMESPACE}/${HW_SERVER} shows no BMC address within 60 s"
		sleep 1
	done
	system="${bmc_url##*/}"
	log "  blank machine ${HW_NAMESPACE}/${HW_SERVER}: BMC ${bmc_url}"

	# The Redfish datacenter's Server names that BMC, trusts its certificate, and gets a static address.
	k -n "${RF_NAMESPACE}" create secret generic bmc-ca --from-file=ca.crt="$(sim_path bmc_certificate)" >/dev/null
	rk apply -f - >/dev/null <<EOF
apiVersion: stargate.io/v1alpha1
kind: Server
metadata:
  name: ${RF_SERVER}
  labels: {stargate.io/datacenter: redfish}
spec:
  bmc:
    address: https://${BMC_LISTEN}
    systemID: "${system}"
    credentialsSecretRef: {name: bmc}
    caSecretRef: {name: bmc-ca}
  network: {macAddress: "${HW_MAC}"}
EOF
	sed "s/^  namespace: .*/  namespace: ${RF_NAMESPACE}/" "${TMP}/profile.yaml" | rk apply -f - >/dev/null
	rk apply -f - >/dev/null <<EOF
apiVersion: stargate.io/v1alpha1
kind: Operation
metadata: {name: ${RF_OP}}
spec:
  operation: repave
  serverRef: {name: ${RF_SERVER}}
  provisioningProfileRef: {name: k8s-worker-local}
  timeout: 25m
EOF
	log "${RF_OP}: the blank machine installs from its BMC's virtual CD (installer boot, image write, first boot and join under TCG: minutes), alongside what follows"
}

# redfish_finish: wait for the Redfish repave redfish_start created, check every step and the
# machine, then forget the Server and delete the hardware.
redfish_finish() {
	local op="${RF_OP}" ip state step msg
	log "${op}: waiting for the Redfish repave (started $((SECONDS - RF_STARTED)) s ago)"
	wait_operation "${RF_NAMESPACE}" "${op}" "${OP_TIMEOUT}" "${RF_PID}"
	phase_done redfish-repave "${RF_STARTED}"

	for step in ImageReady InstallerReady MediaInserted InstallerBooted ImageWritten BootedFromDisk GuestReady NodeReady; do
		state="$(op_condition "${op}" "${step}" status)"
		msg="$(op_condition "${op}" "${step}" message)"
		[[ "${state}" == True ]] || die "${op}: condition ${step} is '${state}', want True: ${msg}"
		[[ "${step}" != ImageWritten || "${msg}" == *" at "*"/s)"* ]] || die "${op}: ImageWritten does not say the write rate: ${msg}"
		log "  ${op} ${step}: ${msg}"
	done
	[[ "$(rk get server "${RF_SERVER}" -o jsonpath='{.status.bmc.tls}')" == Verified ]] ||
		die "${RF_SERVER}: status.bmc.tls is not Verified: the BMC's certificate should have been checked against bmc-ca"
	state="$(rk get server "${RF_SERVER}" -o jsonpath='{.status.state}')"
	ip="$(rk get server "${RF_SERVER}" -o jsonpath='{.status.ipAddress}')"
	[[ "${state}" == Ready && "${ip}" == "${RF_ADDRESS}" ]] || die "${RF_SERVER}: state '${state}' at '${ip}', want Ready at ${RF_ADDRESS}"
	in_ns ping -c 3 -W 2 "${ip}" >/dev/null || die "${RF_SERVER}: ${ip} does not answer ping from ${NS}"
	[[ "$(k get node "${RF_SERVER}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]] ||
		die "Node ${RF_SERVER} is not Ready"
	[[ "$(k get node "${RF_SERVER}" -o 'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}')" == "${RF_ADDRESS}" ]] ||
		die "Node ${RF_SERVER}'s InternalIP is not ${RF_ADDRESS}"
	# The BMC's side: running from its disk, nothing left in the CD drive, no override pending.
	local hw
	hw="$(await_machine installed_machine "On, no virtual media, no one-time override left")" || exit 1
	log "  ${RF_SERVER} Ready at ${ip} (answers ping), BMC certificate verified; Node ${RF_SERVER} Ready; blank machine: ${hw}"
	rk get operation "${op}" -o jsonpath='{range .status.timeline[*]}{.name}={.duration} {end}' >"${TMP}/${op}.timeline"
	log "  ${op} timeline: $(<"${TMP}/${op}.timeline")"
	operation_table "${RF_NAMESPACE}" "${op}"
	if [[ "${E2E_BENCH_JOIN:-}" == 1 ]]; then
		# The simulator's repave-1 ran the same profile the same way (no golden image yet: the
		# installation by cloud-init itself); the Redfish repave adds the installer and the write.
		local rf_s sim_s
		rf_s="$(op_seconds "${op}" "${RF_NAMESPACE}")" sim_s="$(op_seconds repave-1)"
		log "  repave-1 (simulator) timeline: $(kn get operation repave-1 -o 'jsonpath={range .status.timeline[*]}{.name}={.duration} {end}')"
		log "BENCH redfish: Redfish repave ${rf_s} s, simulator repave of the same profile ${sim_s} s, ratio $(python3 -c "print(round(${rf_s}/${sim_s}, 2))")"
	fi
	PASSED=$((PASSED + 1))

	# Forgetting a real server does not wipe it; the hardware's own deletion does.
	rk delete server "${RF_SERVER}" --timeout=60s >/dev/null || die "Server ${RF_SERVER} was not deleted within 60 s"
	sleep 5
	await_machine running_machine On >/dev/null || exit 1
	[[ -n "$(qemu_pids)" ]] || die "deleting the Redfish Server ${RF_SERVER} stopped the machine: a real server is only forgotten"
	k -n "${HW_NAMESPACE}" delete server "${HW_SERVER}" --timeout=120s >/dev/null ||
		die "the hardware Server ${HW_SERVER} was not deleted within 120 s"
	k delete node "${RF_SERVER}" --ignore-not-found >/dev/null
	# Its VM, tap and files are gone (e2e.sh's Server deletion then checks that nothing at all is left).
	local hw_dir hw_tap
	hw_dir="$(vm_path vm_dir "${HW_NAMESPACE}" "${HW_SERVER}")" && hw_tap="$(vm_path tap "${HW_NAMESPACE}" "${HW_SERVER}")" || exit 1
	[[ -z "$(vm_qemu_pids "${hw_dir}")" ]] || die "after deleting the hardware Server, its QEMU process still runs"
	! in_ns ip link show "${hw_tap}" >/dev/null 2>&1 || die "after deleting the hardware Server, its tap ${hw_tap} is left"
	[[ ! -e "${hw_dir}" ]] || die "after deleting the hardware Server, its VM directory ${hw_dir} is left"
	log "  Redfish Server forgotten with its machine running; the hardware Server's deletion removed the VM"
	PASSED=$((PASSED + 1))
}
