package controller

import "stargate.io/stargate/internal/hostlease"

// Several hosts (simulators, datacenter controllers) may share one management cluster, with
// --server-selector saying which Servers each may take. A host owns a Server once it recorded
// itself in status.host; only the owner runs the Server's Operations, and each host guards the
// cleanup of what it holds with a finalizer of its own, so it releases its VM, tap, IP and files
// even after the Server was relabelled away from it.

// finalizerPrefix starts the finalizers of one host.
const finalizerPrefix = "stargate.io/"

// hostToken turns a host identity into the name part of a finalizer (see hostlease.Token).
func hostToken(hostID string) string { return hostlease.Token(hostID) }

// ServerFinalizer is the finalizer with which a host guards the release of a Server's machine,
// disks, tap, IP and Node.
func ServerFinalizer(hostID string) string { return finalizerPrefix + "server-" + hostToken(hostID) }

// OperationFinalizer is the finalizer with which a host guards a running Operation: deleting it
// powers the Server off on that host and returns its capacity.
func OperationFinalizer(hostID string) string {
	return finalizerPrefix + "operation-" + hostToken(hostID)
}
