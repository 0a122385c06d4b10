#!/usr/bin/env bash
# local-cluster.sh runs a small Kubernetes control plane as plain host processes — "kind where there is
# no Docker" — that the simulator's VMs can join as workers with `kubeadm join`.
#
#   scripts/local-cluster.sh up                 # start (or repair) etcd, kube-apiserver, kube-controller-manager,
#                                               # kube-scheduler and the file server; idempotent
#   scripts/local-cluster.sh status             # what runs; exit 0 only when everything does
#   scripts/local-cluster.sh kubeconfig-path    # the admin kubeconfig (server https://127.0.0.1:6443)
#   scripts/local-cluster.sh join-command       # a fresh `kubeadm join ADVERTISE_IP:6443 --token ... ` line
#   scripts/local-cluster.sh profile [IMAGE]    # config/samples/provisioningprofile-k8s-worker-local.yaml with
#                                               # a fresh token, the CA hash and the file server filled in
#   scripts/local-cluster.sh down               # stop everything and remove STATE_DIR
#
# Environment (defaults in brackets):
#   STATE_DIR         [/var/lib/stargate/local-cluster] certificates, kubeconfigs, etcd data, logs, pidfiles
#   ADVERTISE_IP      [192.168.100.1] the address VMs reach the control plane on (the simulator's bridge
#                     address). It need not exist at `up`: the API server and the file server listen on
#                     0.0.0.0 and the address is only advertised (certificates, cluster-info).
#   KUBE_BIN_DIR      [the cache dir of hack/kube-binaries.sh all] etcd, kube-*, kubelet, kubeadm, kubectl
#   FILE_SERVER_PORT  [8088] HTTP port serving kubelet, kubeadm and kubectl to the guests
#   TOKEN_TTL         [24h] lifetime of the bootstrap tokens of join-command and profile
#
# Ports (fixed): 6443 (kube-apiserver, all addresses), 2379/2380/2381 (etcd, 127.0.0.1), 10257
# (kube-controller-manager, 127.0.0.1), 10259 (kube-scheduler, 127.0.0.1), FILE_SERVER_PORT (all addresses).
# Run it inside a network namespace (`ip netns exec NS ...`) to keep all of that off the host's network;
# hack/e2e.sh and scripts/demo.sh do. Every command runs as root, like the simulator it serves.
# The processes are detached (setsid): they outlive this script until `down`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/.." && pwd)"
readonly HERE REPO
readonly PROFILE_TEMPLATE="${REPO}/config/samples/provisioningprofile-k8s-worker-local.yaml"

STATE_DIR="${STATE_DIR:-/var/lib/stargate/local-cluster}"
ADVERTISE_IP="${ADVERTISE_IP:-192.168.100.1}"
FILE_SERVER_PORT="${FILE_SERVER_PORT:-8088}"
TOKEN_TTL="${TOKEN_TTL:-24h}"
if [[ -z "${KUBE_BIN_DIR:-}" ]]; then
	# Only the directory, not a build: a missing build is reported instead of silently started
	# (~15 minutes cold).
	KUBE_BIN_DIR="$("${REPO}/hack/kube-binaries.sh" dir)"
fi

readonly API_PORT=6443
readonly POD_SUBNET=10.244.0.0/16
readonly SERVICE_SUBNET=10.96.0.0/12
# Start order; `down` stops in reverse (the API server before etcd: it hangs in shutdown without etcd).
readonly COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler file-server)
readonly MARKER=.stargate-local-cluster

LOG_TAG=local-cluster
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

# --- paths ----------------------------------------------------------------------------------------
PKI="${STATE_DIR}/pki"
KUBEADM_DIR="${STATE_DIR}/kubeadm"   # kubeadm's own kubeconfigs (server https://ADVERTISE_IP:6443), untouched
KUBECONFIG_DIR="${STATE_DIR}/kubeconfig" # copies for host processes (server https://127.0.0.1:6443)
ADMIN_CONF="${KUBECONFIG_DIR}/admin.conf"
LOG_DIR="${STATE_DIR}/logs"
RUN_DIR="${STATE_DIR}/run"
FILES_DIR="${STATE_DIR}/files"
KUBEADM_CONFIG="${STATE_DIR}/kubeadm.yaml"                # this host's paths
KUBEADM_UPLOAD_CONFIG="${STATE_DIR}/kubeadm-cluster.yaml" # standard paths, uploaded for the workers

bin() { printf '%s/%s' "${KUBE_BIN_DIR}" "$1"; }

# --- checks ---------------------------------------------------------------------------------------
validate_settings() {
	[[ "${ADVERTISE_IP}" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
		die "ADVERTISE_IP=${ADVERTISE_IP} is not an IPv4 address"
	local octet
	for octet in "${BASH_REMATCH[@]:1}"; do
		((10#${octet} <= 255)) || die "ADVERTISE_IP=${ADVERTISE_IP} is not an IPv4 address"
	done
	if ! [[ "${FILE_SERVER_PORT}" =~ ^[0-9]{1,5}$ ]] || ((FILE_SERVER_PORT < 1 || FILE_SERVER_PORT > 65535)); then
		die "FILE_SERVER_PORT=${FILE_SERVER_PORT} is not a TCP port"
	fi
	[[ "${TOKEN_TTL}" =~ ^[0-9]+[hms]$ ]] || die "TOKEN_TTL=${TOKEN_TTL}: want a duration such as 24h or 90m"
	[[ "${STATE_DIR}" == /* ]] || die "STATE_DIR=${STATE_DIR} must be an absolute path"
	[[ "${STATE_DIR}" != / && "${STATE_DIR}" =~ ^/[A-Za-z0-9._/+-]+$ && "${STATE_DIR}" != *..* ]] ||
		die "STATE_DIR=${STATE_DIR}: use a plain absolute path (letters, digits, . _ / + -), not /"
}

require_root() {
	[[ "$(id -u)" == 0 ]] || die "must run as root (it runs a control plane for the simulator, which runs as root): sudo $0 ${ARGS[*]}"
}

require_binaries() {
	local b missing=()
	for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm kubectl; do
		[[ -x "$(bin "${b}")" ]] || missing+=("${b}")
	done
	((${#missing[@]} == 0)) || die "Kubernetes binaries missing in KUBE_BIN_DIR=${KUBE_BIN_DIR}: ${missing[*]}. Run \`make kube-binaries\` (builds them from the Go module proxy and caches them; ~15 min cold) or point KUBE_BIN_DIR at a directory that has them."
	local t
	for t in curl ss setsid base64; do
		command -v "${t}" >/dev/null || die "${t} not found: apt-get install curl iproute2 util-linux coreutils"
	done
	python3_bin >/dev/null || die "python3 not found (serves the binaries to the guests): apt-get install python3"
}

python3_bin() {
	if [[ -x /usr/bin/python3 ]]; then printf '/usr/bin/python3'; else command -v python3; fi
}

require_state() {
	[[ -f "${STATE_DIR}/${MARKER}" && -f "${ADMIN_CONF}" ]] ||
		die "no local cluster in STATE_DIR=${STATE_DIR}: run \`$0 up\` first"
}

# --- processes ------------------------------------------------------------------------------------
pidfile() { printf '%s/%s.pid' "${RUN_DIR}" "$1"; }

# pid_of NAME prints the PID of a running component of THIS cluster: the pidfile's process must be alive and
# have STATE_DIR on its command line (a recycled PID of an unrelated process does not count).
pid_of() {
	local f pid
	f="$(pidfile "$1")"
	[[ -f "${f}" ]] || return 1
	pid="$(<"${f}")"
	[[ "${pid}" =~ ^[0-9]+$ ]] || return 1
	[[ -r "/proc/${pid}/cmdline" ]] || return 1
	tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF -- "${STATE_DIR}/" || return 1
	printf '%s' "${pid}"
}

# start NAME CMD...: start CMD detached (own session, no terminal), logging to LOG_DIR/NAME.log, unless running.
start() {
	local name="$1"
	shift
	local pid
	if pid="$(pid_of "${name}")"; then
		log "${name} already running (pid ${pid})"
		return 0
	fi
	setsid "$@" >>"${LOG_DIR}/${name}.log" 2>&1 </dev/null &
	pid=$!
	printf '%s\n' "${pid}" >"$(pidfile "${name}")"
	log "started ${name} (pid ${pid}, log ${LOG_DIR}/${name}.log)"
}

# running PID: the process exists and is not a zombie (an exited process whose parent — here init, as the
# components are detached — has not reaped it yet).
running() {
	[[ -r "/proc/$1/status" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# stop NAME: SIGTERM, up to 10 s grace, then SIGKILL. (`down` deletes all state right after, so a graceful
# shutdown buys nothing; kube-apiserver can wait up to a minute for connections of VMs that were killed.)
stop() {
	local name="$1" pid i
	if ! pid="$(pid_of "${name}")"; then
		rm -f "$(pidfile "${name}")"
		return 0
	fi
	kill -TERM "${pid}" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		running "${pid}" || break
		sleep 0.1
	done
	if running "${pid}"; then
		log "${name} (pid ${pid}) did not stop within 10 s of SIGTERM: killing it"
		kill -KILL "${pid}" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			running "${pid}" || break
			sleep 0.1
		done
	fi
	rm -f "$(pidfile "${name}")"
	log "stopped ${name} (pid ${pid})"
}

# wait_until NAME SECONDS DESCRIPTION CMD...: poll CMD every 0.5 s; fail (with the log tail) when the
# component died or the time is up.
wait_until() {
	local name="$1" secs="$2" what="$3"
	shift 3
	local deadline=$((SECONDS + secs)) pid
	pid="$(<"$(pidfile "${name}")")"
	until "$@" >/dev/null 2>&1; do
		# By its pid alone, not pid_of: until the started child has exec'd, its command line is still
		# this script's (on a busy host the first check can come that early).
		if ! running "${pid}"; then
			tail -n 30 "${LOG_DIR}/${name}.log" >&2 || true
			die "${name} exited while waiting for ${what}; its log: ${LOG_DIR}/${name}.log"
		fi
		if ((SECONDS >= deadline)); then
			tail -n 30 "${LOG_DIR}/${name}.log" >&2 || true
			die "${what} not reached within ${secs} s; log: ${LOG_DIR}/${name}.log"
		fi
		sleep 0.5
	done
}

# port_free PORT: nothing listens on TCP PORT (any address) in this network namespace.
port_free() { [[ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }

check_ports() { # check_ports NAME PORT...: the ports a stopped component needs must be free
	local name="$1" port
	shift
	pid_of "${name}" >/dev/null && return 0
	for port in "$@"; do
		port_free "${port}" || die "port ${port} (needed by ${name}) is already in use by another process: $(ss -Hltnp "sport = :${port}" | head -n1). Stop it, or run the local cluster in its own network namespace (ip netns exec NS $0 up)."
	done
}

kctl() { "$(bin kubectl)" --kubeconfig "${ADMIN_CONF}" --request-timeout=30s "$@"; }

# --- up -------------------------------------------------------------------------------------------
# kubeadm_config CERT_DIR ETCD_DATA_DIR prints the kubeadm configuration.
kubeadm_config() {
	local version
	version="$("$(bin kubeadm)" version -o short)" # pinned: otherwise kubeadm asks dl.k8s.io for "stable-1"
	cat <<EOF
# Written by scripts/local-cluster.sh; regenerated by every \`up\`.
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: ${ADVERTISE_IP}
  bindPort: ${API_PORT}
nodeRegistration:
  name: stargate-control-plane
  criSocket: unix:///var/run/containerd/containerd.sock
  taints: []
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: kubernetes
kubernetesVersion: ${version}
controlPlaneEndpoint: ${ADVERTISE_IP}:${API_PORT}
certificatesDir: ${1}
networking:
  dnsDomain: cluster.local
  serviceSubnet: ${SERVICE_SUBNET}
  podSubnet: ${POD_SUBNET}
apiServer:
  certSANs:
    - ${ADVERTISE_IP}
    - 127.0.0.1
    - localhost
etcd:
  local:
    dataDir: ${2}
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
EOF
}

# write_kubeadm_configs writes two configurations that differ only in paths: KUBEADM_CONFIG, with this
# host's STATE_DIR, generates certificates and kubeconfigs; KUBEADM_UPLOAD_CONFIG, with kubeadm's standard
# paths, is what the cluster stores for joining nodes (kubeadm derives e.g. the kubelet's clientCAFile from
# certificatesDir: a STATE_DIR path there makes every worker's kubelet fail to start).
write_kubeadm_configs() {
	kubeadm_config "${PKI}" "${STATE_DIR}/etcd" >"${KUBEADM_CONFIG}.tmp"
	mv -f "${KUBEADM_CONFIG}.tmp" "${KUBEADM_CONFIG}"
	kubeadm_config /etc/kubernetes/pki /var/lib/etcd >"${KUBEADM_UPLOAD_CONFIG}.tmp"
	mv -f "${KUBEADM_UPLOAD_CONFIG}.tmp" "${KUBEADM_UPLOAD_CONFIG}"
}

# local_kubeconfigs copies kubeadm's kubeconfigs with the server set to 127.0.0.1: host processes must
# work before the bridge (and so ADVERTISE_IP) exists. The API server certificate has 127.0.0.1 as a SAN.
local_kubeconfigs() {
	local f
	for f in admin super-admin controller-manager scheduler; do
		cp -f "${KUBEADM_DIR}/${f}.conf" "${KUBECONFIG_DIR}/${f}.conf.tmp"
		"$(bin kubectl)" config set-cluster kubernetes --server="https://127.0.0.1:${API_PORT}" \
			--kubeconfig="${KUBECONFIG_DIR}/${f}.conf.tmp" >/dev/null
		chmod 0600 "${KUBECONFIG_DIR}/${f}.conf.tmp"
		mv -f "${KUBECONFIG_DIR}/${f}.conf.tmp" "${KUBECONFIG_DIR}/${f}.conf"
	done
}

start_etcd() {
	check_ports etcd 2379 2380 2381
	start etcd "$(bin etcd)" \
		--name=stargate-control-plane \
		--data-dir="${STATE_DIR}/etcd" \
		--listen-client-urls=https://127.0.0.1:2379 --advertise-client-urls=https://127.0.0.1:2379 \
		--listen-peer-urls=https://127.0.0.1:2380 --initial-advertise-peer-urls=https://127.0.0.1:2380 \
		--initial-cluster=stargate-control-plane=https://127.0.0.1:2380 \
		--listen-metrics-urls=http://127.0.0.1:2381 \
		--cert-file="${PKI}/etcd/server.crt" --key-file="${PKI}/etcd/server.key" \
		--client-cert-auth=true --trusted-ca-file="${PKI}/etcd/ca.crt" \
		--peer-cert-file="${PKI}/etcd/peer.crt" --peer-key-file="${PKI}/etcd/peer.key" \
		--peer-client-cert-auth=true --peer-trusted-ca-file="${PKI}/etcd/ca.crt" \
		--snapshot-count=10000
	wait_until etcd 30 "etcd health" curl -fsS --max-time 2 http://127.0.0.1:2381/health
}

start_apiserver() {
	check_ports kube-apiserver "${API_PORT}"
	start kube-apiserver "$(bin kube-apiserver)" \
		--advertise-address="${ADVERTISE_IP}" --bind-address=0.0.0.0 --secure-port="${API_PORT}" \
		--allow-privileged=true \
		--authorization-mode=Node,RBAC \
		--enable-admission-plugins=NodeRestriction \
		--enable-bootstrap-token-auth=true \
		--client-ca-file="${PKI}/ca.crt" \
		--tls-cert-file="${PKI}/apiserver.crt" --tls-private-key-file="${PKI}/apiserver.key" \
		--etcd-servers=https://127.0.0.1:2379 --etcd-cafile="${PKI}/etcd/ca.crt" \
		--etcd-certfile="${PKI}/apiserver-etcd-client.crt" --etcd-keyfile="${PKI}/apiserver-etcd-client.key" \
		--kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt" \
		--kubelet-client-key="${PKI}/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname \
		--proxy-client-cert-file="${PKI}/front-proxy-client.crt" --proxy-client-key-file="${PKI}/front-proxy-client.key" \
		--requestheader-allowed-names=front-proxy-client --requestheader-client-ca-file="${PKI}/front-proxy-ca.crt" \
		--requestheader-extra-headers-prefix=X-Remote-Extra- --requestheader-group-headers=X-Remote-Group \
		--requestheader-username-headers=X-Remote-User \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="${PKI}/sa.pub" --service-account-signing-key-file="${PKI}/sa.key" \
		--service-cluster-ip-range="${SERVICE_SUBNET}"
	wait_until kube-apiserver 60 "kube-apiserver /readyz" \
		curl -fsS --max-time 2 --cacert "${PKI}/ca.crt" "https://127.0.0.1:${API_PORT}/readyz"
}

start_controllers() {
	check_ports kube-controller-manager 10257
	start kube-controller-manager "$(bin kube-controller-manager)" \
		--kubeconfig="${KUBECONFIG_DIR}/controller-manager.conf" \
		--authentication-kubeconfig="${KUBECONFIG_DIR}/controller-manager.conf" \
		--authorization-kubeconfig="${KUBECONFIG_DIR}/controller-manager.conf" \
		--bind-address=127.0.0.1 \
		--client-ca-file="${PKI}/ca.crt" --requestheader-client-ca-file="${PKI}/front-proxy-ca.crt" \
		--cluster-name=kubernetes \
		--cluster-signing-cert-file="${PKI}/ca.crt" --cluster-signing-key-file="${PKI}/ca.key" \
		--controllers='*,bootstrapsigner,tokencleaner' \
		--allocate-node-cidrs=true --cluster-cidr="${POD_SUBNET}" --node-cidr-mask-size=24 \
		--service-cluster-ip-range="${SERVICE_SUBNET}" \
		--root-ca-file="${PKI}/ca.crt" --service-account-private-key-file="${PKI}/sa.key" \
		--use-service-account-credentials=true \
		--leader-elect=false
	check_ports kube-scheduler 10259
	start kube-scheduler "$(bin kube-scheduler)" \
		--kubeconfig="${KUBECONFIG_DIR}/scheduler.conf" \
		--authentication-kubeconfig="${KUBECONFIG_DIR}/scheduler.conf" \
		--authorization-kubeconfig="${KUBECONFIG_DIR}/scheduler.conf" \
		--bind-address=127.0.0.1 --leader-elect=false
}

start_file_server() {
	local b
	for b in kubelet kubeadm kubectl; do
		ln -sfn "$(bin "${b}")" "${FILES_DIR}/${b}"
	done
	check_ports file-server "${FILE_SERVER_PORT}"
	start file-server "$(python3_bin)" -m http.server --bind 0.0.0.0 --directory "${FILES_DIR}" "${FILE_SERVER_PORT}"
	wait_until file-server 15 "the file server on port ${FILE_SERVER_PORT}" \
		curl -fsS --max-time 2 -o /dev/null -I "http://127.0.0.1:${FILE_SERVER_PORT}/kubeadm"
}

# bootstrap_cluster does, against the running API server, what `kubeadm join` needs: the kubeadm and kubelet
# ConfigMaps, bootstrap-token RBAC (CSR creation and auto-approval, node lookup), a bootstrap token and the
# cluster-info ConfigMap in kube-public — pointing at ADVERTISE_IP, not at the 127.0.0.1 the host uses.
bootstrap_cluster() {
	# admin.conf's user is in group kubeadm:cluster-admins; kubeadm init binds it with super-admin.conf.
	"$(bin kubectl)" --kubeconfig "${KUBECONFIG_DIR}/super-admin.conf" --request-timeout=30s \
		create clusterrolebinding kubeadm:cluster-admins --clusterrole=cluster-admin --group=kubeadm:cluster-admins \
		--dry-run=client -o yaml |
		"$(bin kubectl)" --kubeconfig "${KUBECONFIG_DIR}/super-admin.conf" --request-timeout=30s \
			apply --server-side --field-manager=stargate-local-cluster -f - >/dev/null
	"$(bin kubeadm)" init phase upload-config all --config "${KUBEADM_UPLOAD_CONFIG}" --kubeconfig "${ADMIN_CONF}" \
		>>"${LOG_DIR}/kubeadm.log" 2>&1 || die "kubeadm init phase upload-config failed; see ${LOG_DIR}/kubeadm.log"
	# The bootstrap-token phase (re)writes cluster-info from the kubeconfig it is given, i.e. with 127.0.0.1,
	# which the fix-up below replaces: run it only until that was done once, so that a repeated `up` never
	# shows a joining guest a cluster-info it cannot use.
	if bootstrap_done; then
		log "bootstrap tokens, their RBAC rules and cluster-info already set up"
		return 0
	fi
	"$(bin kubeadm)" init phase bootstrap-token --config "${KUBEADM_CONFIG}" --kubeconfig "${ADMIN_CONF}" \
		>>"${LOG_DIR}/kubeadm.log" 2>&1 || die "kubeadm init phase bootstrap-token failed; see ${LOG_DIR}/kubeadm.log"
	local ca info
	ca="$(base64 -w0 "${PKI}/ca.crt")"
	info="${STATE_DIR}/cluster-info.kubeconfig"
	cat >"${info}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ""
  cluster:
    certificate-authority-data: ${ca}
    server: https://${ADVERTISE_IP}:${API_PORT}
contexts: null
current-context: ""
preferences: {}
users: null
EOF
	kctl -n kube-public create configmap cluster-info --from-file=kubeconfig="${info}" --dry-run=client -o yaml |
		kctl apply --server-side --force-conflicts --field-manager=stargate-local-cluster -f - >/dev/null
}

# bootstrap_done: cluster-info points at ADVERTISE_IP and the phase's last RBAC rule exists.
bootstrap_done() {
	local info
	info="$(kctl -n kube-public get configmap cluster-info -o 'jsonpath={.data.kubeconfig}' 2>/dev/null)" || return 1
	grep -qF "server: https://${ADVERTISE_IP}:${API_PORT}" <<<"${info}" || return 1
	kctl -n kube-public get rolebinding kubeadm:bootstrap-signer-clusterinfo >/dev/null 2>&1
}

cmd_up() {
	require_root
	validate_settings
	require_binaries
	local t0=${SECONDS}
	if [[ -e "${STATE_DIR}" && ! -f "${STATE_DIR}/${MARKER}" ]] && [[ -n "$(ls -A "${STATE_DIR}" 2>/dev/null)" ]]; then
		die "STATE_DIR=${STATE_DIR} exists, is not empty and is not a local cluster's: choose another STATE_DIR"
	fi
	if [[ -f "${STATE_DIR}/advertise-ip" && "$(<"${STATE_DIR}/advertise-ip")" != "${ADVERTISE_IP}" ]]; then
		die "the cluster in ${STATE_DIR} was created for ADVERTISE_IP=$(<"${STATE_DIR}/advertise-ip"), not ${ADVERTISE_IP} (certificates name it): run \`$0 down\` first"
	fi
	mkdir -p "${STATE_DIR}"
	chmod 0700 "${STATE_DIR}"
	: >"${STATE_DIR}/${MARKER}"
	printf '%s\n' "${ADVERTISE_IP}" >"${STATE_DIR}/advertise-ip"
	mkdir -p "${PKI}" "${KUBEADM_DIR}" "${KUBECONFIG_DIR}" "${LOG_DIR}" "${RUN_DIR}" "${FILES_DIR}" "${STATE_DIR}/etcd"
	chmod 0700 "${STATE_DIR}/etcd"

	write_kubeadm_configs
	# Existing certificates and kubeconfigs are reused (kubeadm checks them against the CA).
	"$(bin kubeadm)" init phase certs all --config "${KUBEADM_CONFIG}" >>"${LOG_DIR}/kubeadm.log" 2>&1 ||
		die "kubeadm init phase certs all failed; see ${LOG_DIR}/kubeadm.log"
	"$(bin kubeadm)" init phase kubeconfig all --config "${KUBEADM_CONFIG}" --kubeconfig-dir "${KUBEADM_DIR}" \
		>>"${LOG_DIR}/kubeadm.log" 2>&1 || die "kubeadm init phase kubeconfig all failed; see ${LOG_DIR}/kubeadm.log"
	local_kubeconfigs
	log "certificates and kubeconfigs ready after $((SECONDS - t0)) s"

	start_etcd
	start_apiserver
	log "kube-apiserver ready after $((SECONDS - t0)) s"
	start_controllers
	start_file_server
	bootstrap_cluster
	wait_until kube-controller-manager 30 "kube-controller-manager /healthz" \
		curl -fsSk --max-time 2 https://127.0.0.1:10257/healthz
	wait_until kube-scheduler 30 "kube-scheduler /healthz" curl -fsSk --max-time 2 https://127.0.0.1:10259/healthz
	log "up after $((SECONDS - t0)) s: API https://${ADVERTISE_IP}:${API_PORT} (and https://127.0.0.1:${API_PORT}), files http://${ADVERTISE_IP}:${FILE_SERVER_PORT}/"
	log "kubectl --kubeconfig ${ADMIN_CONF} get nodes"
}

# --- down -----------------------------------------------------------------------------------------
cmd_down() {
	require_root
	validate_settings
	if [[ ! -e "${STATE_DIR}" ]]; then
		log "nothing to do: ${STATE_DIR} does not exist"
		return 0
	fi
	[[ -f "${STATE_DIR}/${MARKER}" ]] ||
		die "STATE_DIR=${STATE_DIR} is not a local cluster's (no ${MARKER} marker): not touching it"
	local i
	for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
		stop "${COMPONENTS[i]}"
	done
	rm -rf --one-file-system -- "${STATE_DIR}"
	log "down: stopped everything and removed ${STATE_DIR}"
}

# --- status ---------------------------------------------------------------------------------------
cmd_status() {
	require_root
	validate_settings
	if [[ ! -f "${STATE_DIR}/${MARKER}" ]]; then
		printf 'no local cluster in %s\n' "${STATE_DIR}"
		return 1
	fi
	local name pid ok=0
	for name in "${COMPONENTS[@]}"; do
		if pid="$(pid_of "${name}")"; then
			printf '%-24s running (pid %s)\n' "${name}" "${pid}"
		else
			printf '%-24s STOPPED (log: %s/%s.log)\n' "${name}" "${LOG_DIR}" "${name}"
			ok=1
		fi
	done
	if curl -fsS --max-time 3 --cacert "${PKI}/ca.crt" "https://127.0.0.1:${API_PORT}/readyz" >/dev/null 2>&1; then
		printf '%-24s ready at https://127.0.0.1:%s, advertised as https://%s:%s\n' api "${API_PORT}" "${ADVERTISE_IP}" "${API_PORT}"
		kctl get nodes -o wide 2>/dev/null || true
	else
		printf '%-24s NOT READY\n' api
		ok=1
	fi
	printf 'kubeconfig: %s\n' "${ADMIN_CONF}"
	return "${ok}"
}

# --- join-command and profile ---------------------------------------------------------------------
# join_line prints `kubeadm join ADVERTISE_IP:6443 --token T --discovery-token-ca-cert-hash sha256:H` with a
# fresh token. kubeadm prints the endpoint of the kubeconfig it used (127.0.0.1); guests need ADVERTISE_IP.
join_line() {
	require_state
	local out words endpoint="" token="" hash="" i
	out="$("$(bin kubeadm)" token create --kubeconfig "${ADMIN_CONF}" --ttl "${TOKEN_TTL}" \
		--description "stargate local-cluster join" --print-join-command 2>"${LOG_DIR}/token.err")" ||
		die "kubeadm token create failed (is the cluster up? \`$0 status\`): $(cat "${LOG_DIR}/token.err")"
	read -r -a words <<<"${out}"
	[[ "${words[0]:-}" == kubeadm && "${words[1]:-}" == join ]] || die "unexpected output of kubeadm token create: ${out}"
	for ((i = 2; i < ${#words[@]}; i++)); do
		case "${words[i]}" in
		--token) token="${words[i + 1]:-}" ;;
		--discovery-token-ca-cert-hash) hash="${words[i + 1]:-}" ;;
		--*) ;;
		*) [[ -z "${endpoint}" ]] && endpoint="${words[i]}" ;;
		esac
	done
	[[ "${endpoint}" == *:"${API_PORT}" ]] || die "unexpected endpoint in kubeadm's output: ${out}"
	[[ "${token}" =~ ^[a-z0-9]{6}\.[a-z0-9]{16}$ ]] || die "unexpected token in kubeadm's output: ${out}"
	[[ "${hash}" =~ ^sha256:[0-9a-f]{64}$ ]] || die "unexpected CA hash in kubeadm's output: ${out}"
	JOIN_ENDPOINT="${ADVERTISE_IP}:${API_PORT}"
	JOIN_TOKEN="${token}"
	JOIN_HASH="${hash}"
}

cmd_join_command() {
	require_root
	validate_settings
	join_line
	printf 'kubeadm join %s --token %s --discovery-token-ca-cert-hash %s\n' "${JOIN_ENDPOINT}" "${JOIN_TOKEN}" "${JOIN_HASH}"
}

cmd_profile() {
	require_root
	validate_settings
	local image="${1:-}"
	if [[ -z "${image}" ]]; then
		image="$("${REPO}/hack/guest-image/build.sh")" || die "could not get the guest image from hack/guest-image/build.sh"
	fi
	[[ "${image}" =~ ^/[A-Za-z0-9._/+-]+$ && "${image}" != *..* ]] ||
		die "guest image path ${image}: use a plain absolute path (letters, digits, . _ / + -)"
	[[ -f "${image}" ]] || die "guest image ${image} does not exist (build it with \`make guest-image\`)"
	[[ -f "${PROFILE_TEMPLATE}" ]] || die "profile template ${PROFILE_TEMPLATE} is missing"
	join_line
	local text
	text="$(<"${PROFILE_TEMPLATE}")"
	# Plain string replacement (quoted replacement: no pattern or & semantics); every value was validated
	# above to be a path, address, token or hash without YAML- or shell-special characters.
	# The template's URL is file:///__GUEST_IMAGE_PATH__ so that it is a valid file URL as it stands.
	text="${text//__GUEST_IMAGE_PATH__/"${image#/}"}"
	text="${text//__FILE_SERVER__/"${ADVERTISE_IP}:${FILE_SERVER_PORT}"}"
	text="${text//__JOIN_ENDPOINT__/"${JOIN_ENDPOINT}"}"
	text="${text//__TOKEN__/"${JOIN_TOKEN}"}"
	text="${text//__CA_CERT_HASH__/"${JOIN_HASH}"}"
	if [[ "${text}" =~ __[A-Z_]+__ ]]; then
		die "the profile template has a placeholder this script does not know: ${BASH_REMATCH[0]}"
	fi
	printf '%s\n' "${text}"
	# The simulator reads file:// images only below the directories it is given (stderr: stdout is the YAML).
	log "the profile names ${image} by a file:// URL: run the simulator with --image-dir ${image%/*}"
}

cmd_kubeconfig_path() {
	require_root
	validate_settings
	require_state
	printf '%s\n' "${ADMIN_CONF}"
}

main() {
	local cmd="${1:-}"
	shift || true
	case "${cmd}" in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	status) cmd_status "$@" ;;
	join-command) cmd_join_command "$@" ;;
	kubeconfig-path) cmd_kubeconfig_path "$@" ;;
	profile) cmd_profile "$@" ;;
	-h | --help | help) usage ;;
	*)
		usage
		[[ -z "${cmd}" ]] && die "no command given"
		die "unknown command ${cmd}"
		;;
	esac
}

ARGS=("$@")
main "$@"
