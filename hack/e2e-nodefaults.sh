#!/usr/bin/env bash
# e2e-nodefaults.sh holds the node-fault part of hack/e2e.sh (sourced by it; it uses its helpers k, kn,
# die, log and its NAMESPACE and SERVER). A FaultInjection's node fault strikes a repave's installation
# once its Node is Ready: the simulator drops the guest's traffic to the API server at its tap, and the
# cluster's own node lifecycle controller marks the Node NotReady ("Kubelet stopped posting node
# status") after its grace period (50 s by default). NodeFlapping lets it through again after its
# duration, and the Node becomes Ready again.

# node_fault NAME TYPE [DURATION]: a FaultInjection selecting every Server of the namespace, whose one
# fault of TYPE strikes the next repave (firstN 1) once it runs.
node_fault() {
	local name="$1" type="$2" duration="${3:-}"
	{
		cat <<EOF
apiVersion: stargate.io/v1alpha1
kind: FaultInjection
metadata:
  name: ${name}
  namespace: ${NAMESPACE}
spec:
  selector: {}
  faults:
  - name: ${name}
    type: ${type}
    at: Running
    firstN: 1
EOF
		[[ -z "${duration}" ]] || echo "    duration: ${duration}"
	} | kn apply -f - >/dev/null
}

# wait_node_ready WANT SECONDS: wait until the Node's Ready condition is True (WANT=True) or anything
# else (WANT=NotReady); print its message.
wait_node_ready() {
	local want="$1" deadline=$((SECONDS + $2)) st
	while :; do
		st="$(k get node "${SERVER}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" || true
		if [[ "${want}" == True && "${st}" == True ]] || [[ "${want}" == NotReady && -n "${st}" && "${st}" != True ]]; then
			k get node "${SERVER}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].message}'
			return 0
		fi
		((SECONDS < deadline)) || die "Node ${SERVER}: Ready is '${st:-absent}' after $2 s, want ${want}"
		sleep 2
	done
}

# assert_node_fault OP TYPE: the Operation recorded the fault, and it struck: the Node went NotReady
# because its kubelet's status stopped arriving.
assert_node_fault() {
	local op="$1" type="$2" msg event
	[[ " $(kn get operation "${op}" -o 'jsonpath={.status.faults[*].fault.type}') " == *" ${type} "* ]] ||
		die "${op}: status.faults does not record ${type}"
	msg="$(wait_node_ready NotReady 180)"
	[[ "${msg}" == *"stopped posting node status"* ]] || die "${type}: Node ${SERVER} NotReady, but for: ${msg}"
	log "  ${op}: ${type} struck once Node ${SERVER} was Ready; now NotReady: ${msg}"
	# The Server says so too: the simulator's Event when the fault struck.
	event="$(kn get events --field-selector "reason=FaultStruck,involvedObject.name=${SERVER}" \
		-o 'jsonpath={range .items[*]}{.message}{"\n"}{end}' | grep -F "(${type}) struck")" ||
		die "no FaultStruck Event on Server ${SERVER} for ${type}"
	log "  Event on Server ${SERVER}: FaultStruck: ${event}"
}
