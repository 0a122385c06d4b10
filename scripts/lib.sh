# shellcheck shell=bash
# lib.sh holds what the scripts share: messages (log, die), the simulator's directory layout
# (sim_path, vm_path), following Operations (wait_operation, operation_table) and the Debian
# mirror to build from (debian_mirror). Source it; it runs nothing itself:
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
# (work_dir images_dir vms_dir run_dir ipam_dir media_dir golden_dir bakes_dir bmc_certificate; with a server also vm_dir disk seed
# console console_markers pidfile instance_id qmp_socket tap mac).

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

# --- Debian mirror ------------------------------------------------------------------------------
# No mirror's host name is written in this repository: a build takes the one this host's apt uses,
# or the one the operator names.

# debian_mirror SUITE [APT_DIR]: print the Debian mirror to fetch SUITE's packages from, and log
# where it came from. STARGATE_DEBIAN_MIRROR wins; otherwise the first entry of APT_DIR's sources
# (default /etc/apt: sources.list, then sources.list.d/*.list and *.sources in apt's order, one-line
# and deb822 formats) of type deb with exactly SUITE and component main, an http(s) or file URI,
# and no keyring other than Debian's archive keyring (the build verifies with that keyring, so a
# third-party repository that calls its suite SUITE does not qualify). Dies naming the variable
# when neither gives one.
debian_mirror() {
	local suite="$1" apt_dir="${2:-/etc/apt}" mirror="" from="" files=() f
	if [[ -n "${STARGATE_DEBIAN_MIRROR:-}" ]]; then
		mirror="${STARGATE_DEBIAN_MIRROR}" from="STARGATE_DEBIAN_MIRROR"
		[[ "${mirror}" =~ ^(https?://[^/]+|file:/) ]] ||
			die "STARGATE_DEBIAN_MIRROR=${mirror} is no http://, https:// or file:/ URL of a Debian mirror"
	else
		[[ -f "${apt_dir}/sources.list" ]] && files+=("${apt_dir}/sources.list")
		for f in "${apt_dir}"/sources.list.d/*; do
			[[ -f "${f}" && ("${f}" == *.list || "${f}" == *.sources) ]] && files+=("${f}")
		done
		if ((${#files[@]})); then
			IFS=$'\t' read -r mirror from < <(debian_mirror_candidates "${suite}" "${files[@]}") || true
		fi
		[[ -n "${mirror}" ]] ||
			die "no Debian mirror for ${suite}: this host's apt sources (${apt_dir}/sources.list, ${apt_dir}/sources.list.d/) name none for '${suite} main'; set STARGATE_DEBIAN_MIRROR to a Debian mirror's URL"
	fi
	mirror="${mirror%/}"
	log "Debian mirror: ${mirror} (from ${from})"
	printf '%s\n' "${mirror}"
}

# debian_mirror_candidates SUITE FILE...: print "URI<TAB>FILE" for each qualifying entry (see
# debian_mirror), in order.
debian_mirror_candidates() {
	local suite="$1"
	shift
	# shellcheck disable=SC2016 # awk's $1 and $NF, not the shell's
	awk -v suite="${suite}" '
		function keyring_ok(v,   n, i, k) { # Signed-By: none, or Debian archive keyrings only
			if (v ~ /BEGIN PGP/) return 0
			n = split(v, k, /[ ,\t]+/)
			for (i = 1; i <= n; i++) if (k[i] != "" && k[i] !~ /^\/usr\/share\/keyrings\/debian-archive-[^\/]*$/) return 0
			return 1
		}
		function uri_ok(u) { return u ~ /^https?:\/\/[^\/]/ || u ~ /^file:\// }
		function has(list, word,   n, i, w) {
			n = split(list, w, /[ \t]+/)
			for (i = 1; i <= n; i++) if (w[i] == word) return 1
			return 0
		}
		function stanza_end(   n, u, i) { # deb822: one stanza read
			if (has(f["types"], "deb") && has(f["suites"], suite) && has(f["components"], "main") &&
				tolower(f["enabled"]) != "no" && keyring_ok(f["signed-by"])) {
				n = split(f["uris"], u, /[ \t]+/)
				for (i = 1; i <= n; i++) if (uri_ok(u[i])) { print u[i] "\t" file; break }
			}
			delete f; key = ""
		}
		FNR == 1 && NR > 1 && deb822 { stanza_end() }
		FNR == 1 { deb822 = FILENAME ~ /\.sources$/; file = FILENAME }
		deb822 {
			if ($0 ~ /^#/) next
			if ($0 ~ /^[ \t]*$/) { stanza_end(); next }
			if ($0 ~ /^[ \t]/) { if (key != "") f[key] = f[key] " " $0; next } # a continuation line
			i = index($0, ":")
			if (i == 0) next
			key = tolower(substr($0, 1, i - 1))
			v = substr($0, i + 1); gsub(/^[ \t]+|[ \t]+$/, "", v); f[key] = v
			next
		}
		{ # one-line: deb [opts] URI SUITE COMPONENT...
			sub(/#.*/, "")
			if ($1 != "deb") next
			i = 2; opts = ""
			if ($2 ~ /^\[/) {
				for (; i <= NF; i++) { opts = opts " " $i; if ($i ~ /\]$/) { i++; break } }
			}
			gsub(/[\[\]]/, " ", opts)
			keys = ""
			n = split(opts, o, /[ \t]+/)
			for (j = 1; j <= n; j++) if (o[j] ~ /^signed-by=/) keys = keys " " substr(o[j], 11)
			if ($(i + 1) != suite || !uri_ok($i) || !keyring_ok(keys)) next
			for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i "\t" file; next }
		}
		END { if (deb822) stanza_end() }
	' "$@"
}
