// Package fleet measures Stargate's control plane at fleet scale: the real simulator binary,
// running the mock datacenter provider (no VMs), against a real kube-apiserver and etcd on the same
// machine, with thousands of Servers and hundreds of Operations in flight. Its tests check that a
// fleet stays correct (nothing double-booked, everything Succeeded, nothing written while idle);
// its benchmarks report throughput, latency, API requests per Operation, the controller's CPU and
// memory, and the idle cost. The package has no code of its own: it is the measuring harness.
package fleet
