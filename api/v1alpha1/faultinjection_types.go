package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FaultType names a fault a FaultInjection can inject. Which types a host can make real depends
// on its provider: the FaultInjection's status says, per host, which it cannot.
// +kubebuilder:validation:Enum=ImageServerError;ImageSlow;ImageTruncated;ImageCorrupted;DiskReadError;DiskWriteError;DiskSlow;NetworkLatency;NetworkLoss;NetworkPartition;NoDNS;NoRouteToAPIServer;PowerLoss;Hang;KernelCrash;ClockSkew;BMCUnavailable;BMCConnectionRefused;BMCPowerDelay;BMCBootOverrideIgnored;BMCInsertMediaFails;BMCStalePowerState;KubeletStops;NodeFlapping
type FaultType string

// The fault catalog. Parameters in brackets are required for that type and refused for others.
const (
	// FaultImageServerError: the image server answers 5xx [failedTries] times in a row.
	FaultImageServerError FaultType = "ImageServerError"
	// FaultImageSlow: the image downloads at [bytesPerSecond].
	FaultImageSlow FaultType = "ImageSlow"
	// FaultImageTruncated: the image body ends early.
	FaultImageTruncated FaultType = "ImageTruncated"
	// FaultImageCorrupted: the image bytes do not match their checksum.
	FaultImageCorrupted FaultType = "ImageCorrupted"
	// FaultDiskReadError: the disk fails reads after [afterOperations] I/O operations.
	FaultDiskReadError FaultType = "DiskReadError"
	// FaultDiskWriteError: the disk fails writes after [afterOperations] I/O operations.
	FaultDiskWriteError FaultType = "DiskWriteError"
	// FaultDiskSlow: the disk is throttled to [bytesPerSecond].
	FaultDiskSlow FaultType = "DiskSlow"
	// FaultNetworkLatency: packets of the Server are delayed by [duration].
	FaultNetworkLatency FaultType = "NetworkLatency"
	// FaultNetworkLoss: [percent] of the Server's packets are dropped.
	FaultNetworkLoss FaultType = "NetworkLoss"
	// FaultNetworkPartition: the Server's network is cut for [duration].
	FaultNetworkPartition FaultType = "NetworkPartition"
	// FaultNoDNS: the Server's DNS queries go unanswered.
	FaultNoDNS FaultType = "NoDNS"
	// FaultNoRouteToAPIServer: the Server cannot reach the cluster's API server (a join fails).
	FaultNoRouteToAPIServer FaultType = "NoRouteToAPIServer"
	// FaultPowerLoss: the machine loses power.
	FaultPowerLoss FaultType = "PowerLoss"
	// FaultHang: the machine stops for [duration], then continues.
	FaultHang FaultType = "Hang"
	// FaultKernelCrash: the guest's kernel panics.
	FaultKernelCrash FaultType = "KernelCrash"
	// FaultClockSkew: the machine's clock is off by [duration].
	FaultClockSkew FaultType = "ClockSkew"
	// FaultBMCUnavailable: the BMC answers 503 for [duration].
	FaultBMCUnavailable FaultType = "BMCUnavailable"
	// FaultBMCConnectionRefused: the BMC refuses connections for [duration].
	FaultBMCConnectionRefused FaultType = "BMCConnectionRefused"
	// FaultBMCPowerDelay: power changes take effect only after [duration].
	FaultBMCPowerDelay FaultType = "BMCPowerDelay"
	// FaultBMCBootOverrideIgnored: the next one-time boot override is ignored.
	FaultBMCBootOverrideIgnored FaultType = "BMCBootOverrideIgnored"
	// FaultBMCInsertMediaFails: InsertMedia fails.
	FaultBMCInsertMediaFails FaultType = "BMCInsertMediaFails"
	// FaultBMCStalePowerState: the BMC reports the previous PowerState for [duration].
	FaultBMCStalePowerState FaultType = "BMCStalePowerState"
	// FaultKubeletStops: the kubelet stops after the join (the Node goes NotReady).
	FaultKubeletStops FaultType = "KubeletStops"
	// FaultNodeFlapping: the Node's readiness flaps, every [duration].
	FaultNodeFlapping FaultType = "NodeFlapping"
)

// FaultAtRunning is the `at` of a fault that strikes at any time while the Server runs, rather
// than at a step of its repave.
const FaultAtRunning = "Running"

// Fault is one fault: what, where it strikes, how often and its parameters.
//
// +kubebuilder:validation:XValidation:rule="has(self.probability) != has(self.firstN)",message="give exactly one of probability and firstN"
// +kubebuilder:validation:XValidation:rule="(self.type == 'ImageServerError') == has(self.failedTries)",message="failedTries is required for ImageServerError and only for it"
// +kubebuilder:validation:XValidation:rule="(self.type in ['ImageSlow', 'DiskSlow']) == has(self.bytesPerSecond)",message="bytesPerSecond is required for ImageSlow and DiskSlow and only for them"
// +kubebuilder:validation:XValidation:rule="(self.type in ['DiskReadError', 'DiskWriteError']) == has(self.afterOperations)",message="afterOperations is required for DiskReadError and DiskWriteError and only for them"
// +kubebuilder:validation:XValidation:rule="(self.type == 'NetworkLoss') == has(self.percent)",message="percent is required for NetworkLoss and only for it"
// +kubebuilder:validation:XValidation:rule="(self.type in ['NetworkLatency', 'NetworkPartition', 'Hang', 'ClockSkew', 'BMCUnavailable', 'BMCConnectionRefused', 'BMCPowerDelay', 'BMCStalePowerState', 'NodeFlapping']) == has(self.duration)",message="duration is required for NetworkLatency, NetworkPartition, Hang, ClockSkew, BMCUnavailable, BMCConnectionRefused, BMCPowerDelay, BMCStalePowerState and NodeFlapping, and only for them"
// +kubebuilder:validation:XValidation:rule="!self.type.startsWith('Image') || self.at == 'ImageReady'",message="image faults strike at ImageReady"
// +kubebuilder:validation:XValidation:rule="!(self.type in ['KubeletStops', 'NodeFlapping']) || self.at == 'Running'",message="node faults strike while the Server runs: at must be Running"
// +kubebuilder:validation:XValidation:rule="!self.type.startsWith('BMC') || self.at == 'Running'",message="BMC faults strike the Server's BMC while the Server exists: at must be Running"
type Fault struct {
	// Name identifies the fault in this FaultInjection, its status and Events.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// Type is the fault, from the catalog.
	Type FaultType `json:"type"`

	// At is where the fault strikes: a step of a repave (ImageReady, CloudInitReady, NetworkReady,
	// VMRunning, GuestReady), or Running for any time while the Server runs.
	// +kubebuilder:validation:Enum=ImageReady;CloudInitReady;NetworkReady;VMRunning;GuestReady;Running
	At string `json:"at"`

	// Probability that the fault strikes an Operation, from "0" to "1" with at most 4 decimals,
	// e.g. "0.5". The draw is stable per (FaultInjection, Operation, fault): reconciling again
	// never draws again.
	// +kubebuilder:validation:Pattern=`^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$`
	// +kubebuilder:validation:MaxLength=6
	// +optional
	Probability *string `json:"probability,omitempty"`

	// FirstN makes the fault strike the first N Operations it could strike, then no more.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +optional
	FirstN *int32 `json:"firstN,omitempty"`

	// FailedTries is how many requests in a row fail (ImageServerError).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	FailedTries *int32 `json:"failedTries,omitempty"`

	// AfterOperations is how many I/O operations succeed before the errors start (Disk*Error).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000000
	// +optional
	AfterOperations *int64 `json:"afterOperations,omitempty"`

	// BytesPerSecond is the throughput left (ImageSlow, DiskSlow).
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=10737418240
	// +optional
	BytesPerSecond *int64 `json:"bytesPerSecond,omitempty"`

	// Percent of packets dropped (NetworkLoss).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	Percent *int32 `json:"percent,omitempty"`

	// Duration of the fault, or the delay it adds (see the type). A Go duration, at most 1h.
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('1h')",message="duration must be more than 0s and at most 1h"
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`
}

// FaultInjectionSpec selects Servers and lists the faults to inject into them.
type FaultInjectionSpec struct {
	// Selector selects Servers of the FaultInjection's own namespace by label; never Servers of
	// another namespace. An empty selector selects every Server of the namespace.
	Selector metav1.LabelSelector `json:"selector"`

	// Faults to inject.
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	Faults []Fault `json:"faults"`
}

// FaultInjectionStatus is what the hosts injected; each host writes its own entry.
type FaultInjectionStatus struct {
	// Hosts are the hosts that considered this FaultInjection, each with what it injected and its
	// conditions.
	// +listType=map
	// +listMapKey=host
	// +kubebuilder:validation:MaxItems=1000
	// +optional
	Hosts []FaultInjectionHostStatus `json:"hosts,omitempty"`
}

// FaultInjectionHostStatus is one host's account of a FaultInjection.
type FaultInjectionHostStatus struct {
	// Host is the host's identity (--host-id).
	Host string `json:"host"`
	// Injected is how many faults this host injected for this FaultInjection, all faults together.
	Injected int64 `json:"injected"`
	// Faults are the counts per fault, for the faults this host injected at least once.
	// +listType=map
	// +listMapKey=name
	// +optional
	Faults []FaultCount `json:"faults,omitempty"`
	// ObservedGeneration is the metadata.generation the conditions were computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready is True when this host injects every fault of the spec; False with
	// reason FaultInjectionDisabled (--fault-injection=false), Invalid or FaultsUnsupported
	// (the message names the faults this host cannot inject; it injects the others).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// FaultCount is how often one fault was injected, and the last time.
type FaultCount struct {
	// Name of the fault in spec.faults.
	Name string `json:"name"`
	// Type of the fault when it was last injected.
	Type FaultType `json:"type"`
	// Injected counts the Operations the fault was injected into.
	Injected int64 `json:"injected"`
	// LastServer, LastOperation and LastTime describe the last injection.
	// +optional
	LastServer string `json:"lastServer,omitempty"`
	// +optional
	LastOperation string `json:"lastOperation,omitempty"`
	// +optional
	LastTime *metav1.Time `json:"lastTime,omitempty"`
}

// InjectedFault records, on an Operation, a fault handed to the provider for it: the provider
// makes it strike when the Operation reaches spec.at. Recorded once, so that a restart never
// injects again.
type InjectedFault struct {
	// FaultInjection is the name of the FaultInjection that asked for it (same namespace).
	FaultInjection string `json:"faultInjection"`
	// FaultInjectionUID tells a recreated FaultInjection of the same name apart.
	FaultInjectionUID string `json:"faultInjectionUID"`
	// Host is the host that injected it.
	Host string `json:"host"`
	// Time it was handed to the provider.
	Time metav1.Time `json:"time"`
	// Fault is the fault as it was specified then.
	Fault Fault `json:"fault"`
}

// ConditionReady on a FaultInjection host entry is True when that host injects every fault.
const ConditionReady = "Ready"

// FaultInjection injects faults into the Servers of its namespace that its selector selects, so
// that their users can rehearse how Stargate and they handle failure. Creating one needs its own
// RBAC verb on faultinjections; a host turns the feature off with --fault-injection=false.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=fi,categories=stargate
// +kubebuilder:printcolumn:name="Faults",type=string,JSONPath=`.spec.faults[*].type`
// +kubebuilder:printcolumn:name="Hosts",type=string,JSONPath=`.status.hosts[*].host`
// +kubebuilder:printcolumn:name="Injected",type=string,JSONPath=`.status.hosts[*].injected`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.hosts[*].conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.hosts[*].conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type FaultInjection struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec FaultInjectionSpec `json:"spec"`
	// +optional
	Status FaultInjectionStatus `json:"status,omitempty"`
}

// FaultInjectionList is a list of FaultInjections.
//
// +kubebuilder:object:root=true
type FaultInjectionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FaultInjection `json:"items"`
}

func init() {
	addKnownTypes(&FaultInjection{}, &FaultInjectionList{})
}
