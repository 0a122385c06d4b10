# shellcheck shell=bash
# lib.sh holds what the scripts share: messages (log, die), the simulator's directory layout
# (sim_path, vm_path) and following Operations (wait_operation, operation_table). Source it; it
# runs nothing itself:
#
#   LOG_TAG=demo
#   # shellcheck source=scripts/lib.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Settings (set them before or after sourcing):
#   LOG_TAG     names the script in messages: "[LOG_TAG] ..." (default: the script's file name)
#   LOG_CLOCK   when non-empty, messages carry the seconds since lib.sh was sourced: "[LOG_TAG   12s] ..."
#   DIE_WORD    the word before a fatal message (default ERROR)
#   SIMULATOR   the simulator binary (default: bin/simulator of this checkout)
#   WORK_DIR    the simulator's --work-dir (default: the simulator's own default)
# The Operation helpers run kubectl through a function `k` (`k -n NS get operation NAME ...`) that
# the sourcing script defines, so that it decides the kubeconfig and the network namespace.

LIB_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_TAG="${LOG_TAG:-$(basename "${0}" .sh)}"
LIB_T0="${SECONDS}"

# log MESSAGE...: one line on stderr.
log() {
	if [[ -n "${LOG_CLOCK:-}" ]]; then
		printf '[%s %4ds] %s\n' "${LOG_TAG}" "$((SECONDS - LIB_T0))" "$*" >&2
	else
		printf '[%s] %s\n' "${LOG_TAG}" "$*" >&2
	fi
}

# die MESSAGE...: log the message as fatal and exit 1 (EXIT traps run).
die() {
	log "${DIE_WORD:-ERROR}: $*"
	exit 1
}

# --- the simulator's directory layout -----------------------------------------------------------
# The layout is the simulator's to know: `bin/simulator paths` prints it as key=value lines
# (work_dir images_dir vms_dir run_dir ipam_dir media_dir golden_dir bakes_dir; with a server also vm_dir disk seed
# console pidfile instance_id qmp_socket tap mac).

# sim_path KEY [NAMESPACE SERVER]: print one value of the layout for WORK_DIR.
sim_path() {
	local key="$1" sim="${SIMULATOR:-${LIB_REPO}/bin/simulator}" out line
	local args=()
	[[ -n "${WORK_DIR:-}" ]] && args+=(--work-dir "${WORK_DIR}")
	(($# >= 3)) && args+=(--namespace "$2" --server "$3")
	[[ -x "${sim}" ]] || die "${sim} is missing: run \`make build\`"
	# No kubeconfig: `paths` needs none, and a simulator built before `paths` existed then stops at
	# once ("no cluster to talk to") instead of starting a controller.
	out="$(KUBECONFIG=/dev/null/none "${sim}" paths "${args[@]}")" ||
		die "\`${sim} paths ${args[*]}\` failed (a simulator without the paths subcommand? run \`make build\`)"
	while IFS= read -r line; do
		if [[ "${line%%=*}" == "${key}" ]]; then
			printf '%s\n' "${line#*=}"
			return 0
		fi
	done <<<"${out}"
	die "\`${sim} paths ${args[*]}\` printed no ${key}"
}

# vm_path KEY NAMESPACE SERVER: print one path (or name) of a Server's VM, such as console or qmp_socket.
vm_path() {
	(($# == 3)) || die "usage: vm_path KEY NAMESPACE SERVER"
	sim_path "$@"
}

# --- Operations ---------------------------------------------------------------------------------

# wait_operation NAMESPACE NAME TIMEOUT_SECONDS [PID]: follow the Operation until it is final,
# logging its phase and message when the phase or the step changes (else every 30 s). Returns when
# it Succeeded (and has condition Succeeded=True); dies when it Failed (after its step table), when
# TIMEOUT_SECONDS pass, or when process PID (the simulator) is gone.
wait_operation() {
	local ns="$1" name="$2" timeout="$3" pid="${4:-}"
	local t0="${SECONDS}" deadline=$((SECONDS + timeout)) phase msg last="" printed=0
	while :; do
		phase="" msg=""
		# One read per poll: the phase, then the message's first line.
		{ IFS= read -r phase || true; IFS= read -r msg || true; } < <(k -n "${ns}" get operation "${name}" \
			-o 'jsonpath={.status.phase}{"\n"}{.status.message}' 2>/dev/null || true)
		# The step is the message up to its first digit: download progress alone is no news.
		if [[ "${phase}: ${msg%%[0-9]*}" != "${last}" ]] || ((SECONDS - printed >= 30)); then
			log "  ${name} [$((SECONDS - t0))s]: ${phase:-<none>}: ${msg:0:170}"
			last="${phase}: ${msg%%[0-9]*}"
			printed="${SECONDS}"
		fi
		case "${phase}" in
		Succeeded) break ;;
		Failed)
			operation_table "${ns}" "${name}" >&2 || true
			die "Operation ${name} failed: $(k -n "${ns}" get operation "${name}" -o 'jsonpath={.status.message}')"
			;;
		esac
		if [[ -n "${pid}" ]] && ! kill -0 "${pid}" 2>/dev/null; then
			die "the simulator (pid ${pid}) exited while Operation ${name} was running"
		fi
		((SECONDS < deadline)) || die "Operation ${name} not finished after ${timeout} s (phase ${phase:-<none>}): ${msg}"
		sleep "${OPERATION_POLL_SECONDS:-3}"
	done
	# The Succeeded condition is what users wait for: `kubectl wait --for=condition=Succeeded`.
	k -n "${ns}" wait --for=condition=Succeeded "operation/${name}" --timeout=30s >/dev/null ||
		die "Operation ${name} has phase Succeeded but not condition Succeeded=True"
}

# operation_steps NAMESPACE NAME: one line per condition of the Operation, "TYPE STATUS SECONDS", with
# the seconds from the Operation's status.startTime (its creation before it started) to the
# condition's lastTransitionTime.
operation_steps() {
	local created started type status at start
	k -n "$1" get operation "$2" -o go-template='{{.metadata.creationTimestamp}} {{with .status}}{{with .startTime}}{{.}}{{end}}{{end}}{{"\n"}}{{with .status}}{{range .conditions}}{{.type}} {{.status}} {{.lastTransitionTime}}{{"\n"}}{{end}}{{end}}' | {
		read -r created started || return 0
		start="$(date -d "${started:-${created}}" +%s)"
		while read -r type status at; do
			printf '%s %s %d\n' "${type}" "${status}" "$(($(date -d "${at}" +%s) - start))"
		done
	}
}

# operation_table NAMESPACE NAME...: a table of the Operations' steps (conditions) in seconds from
# each Operation's start until the step became True; a step not True shows its status instead.
operation_table() {
	local ns="$1" name type status secs width=16
	shift
	local -A cell=() seen=()
	local -a types=()
	for name in "$@"; do
		((${#name} + 2 > width)) && width=$((${#name} + 2))
		while read -r type status secs; do
			[[ -n "${seen["${type}"]:-}" ]] || types+=("${type}")
			seen["${type}"]=1
			if [[ "${status}" == True ]]; then cell["${type} ${name}"]="${secs}"; else cell["${type} ${name}"]="${status}"; fi
		done < <(operation_steps "${ns}" "${name}")
	done
	printf '\nSeconds from each Operation'"'"'s start until each step was done:\n'
	printf '%-16s' STEP
	for name in "$@"; do printf '%*s' "${width}" "${name}"; done
	printf '\n'
	for type in "${types[@]}"; do
		printf '%-16s' "${type}"
		for name in "$@"; do printf '%*s' "${width}" "${cell["${type} ${name}"]:--}"; done
		printf '\n'
	done
}
