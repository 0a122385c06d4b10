package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// OperationType names what an Operation does to its Server.
// +kubebuilder:validation:Enum=repave;powerOn;powerOff;reboot;evacuate
type OperationType string

const (
	// OperationRepave wipes the server and installs it afresh from a ProvisioningProfile: new disk,
	// new instance-id, same IP and MAC.
	OperationRepave OperationType = "repave"
	// OperationPowerOn powers an installed server on from its disk (nothing is reinstalled).
	OperationPowerOn OperationType = "powerOn"
	// OperationPowerOff shuts the server down gracefully (ACPI power button) and forces it off when
	// it is still on after spec.gracePeriod. Disk, IP and MAC are kept.
	OperationPowerOff OperationType = "powerOff"
	// OperationReboot powers the server off (as powerOff) and on again.
	OperationReboot OperationType = "reboot"
	// OperationEvacuate takes the Server away from its owner host after that host was lost (its
	// Lease unrenewed for the grace period): ownership is cleared (status.hostEpoch counts it),
	// the lost host's finalizers are removed and its running Operations fail (HostEvacuated), so
	// that the next repave installs the Server on a host whose selector matches. Refused
	// (HostNotLost) while the owner renews its Lease, and (NotOwned) when the Server has no owner.
	OperationEvacuate OperationType = "evacuate"
)

// IsPower reports whether the Operation only changes the power state of its Server.
func (t OperationType) IsPower() bool {
	return t == OperationPowerOn || t == OperationPowerOff || t == OperationReboot
}

// LocalObjectReference names an object in the Operation's own namespace.
type LocalObjectReference struct {
	// Name of the object, in the same namespace as the Operation.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// OperationSpec says what to do to which server. It cannot be changed after creation: to run an
// Operation again, or differently, create a new one.
//
// +kubebuilder:validation:XValidation:rule="self.operation != 'repave' || has(self.provisioningProfileRef)",message="a repave needs spec.provisioningProfileRef: name the ProvisioningProfile to install the server with"
// +kubebuilder:validation:XValidation:rule="self.operation == 'repave' || !has(self.provisioningProfileRef)",message="only a repave takes spec.provisioningProfileRef: power operations keep what is installed"
// +kubebuilder:validation:XValidation:rule="!has(self.gracePeriod) || self.operation == 'powerOff' || self.operation == 'reboot'",message="spec.gracePeriod applies to powerOff and reboot only"
type OperationSpec struct {
	// Operation is what to do: "repave" wipes the server and installs it from the profile;
	// "powerOn", "powerOff" and "reboot" change its power state and keep what is installed;
	// "evacuate" hands the Server of a lost host over (see OperationEvacuate).
	Operation OperationType `json:"operation"`

	// ServerRef names the Server to act on, in the Operation's namespace.
	ServerRef LocalObjectReference `json:"serverRef"`

	// ProvisioningProfileRef names the ProvisioningProfile to install, in the Operation's
	// namespace. Required for a repave.
	// +optional
	ProvisioningProfileRef *LocalObjectReference `json:"provisioningProfileRef,omitempty"`

	// GracePeriod is how long a powerOff or reboot waits for the guest to shut down after the ACPI
	// power button before it forces the server off. A Go duration; default 1m.
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('1h')",message="spec.gracePeriod must be between 0s and 1h"
	// +optional
	GracePeriod *metav1.Duration `json:"gracePeriod,omitempty"`

	// Timeout bounds the Operation twice: how long it may wait in Pending (from its creation) and
	// how long it may run (from its start). When either passes, the Operation fails with the reason
	// it waited for or the step it was stuck at. A Go duration such as "30m" or "1h".
	// +kubebuilder:default="30m"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s')",message="spec.timeout must be at least 10s, e.g. 30m"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// OperationPhase is where an Operation is in its life, for humans. Conditions are the truth.
// +kubebuilder:validation:Enum=Pending;Running;Succeeded;Failed
type OperationPhase string

const (
	// OperationPending means the Operation waits to start: for its Server, its profile, another
	// Operation on the same Server, or host capacity. The message says which.
	OperationPending OperationPhase = "Pending"
	// OperationRunning means the Operation is acting on the Server.
	OperationRunning OperationPhase = "Running"
	// OperationSucceeded is final: the Operation did what it was asked.
	OperationSucceeded OperationPhase = "Succeeded"
	// OperationFailed is final: the Operation stopped; message and conditions say where and why.
	OperationFailed OperationPhase = "Failed"
)

// IsFinal reports whether the phase is one an Operation never leaves.
func (p OperationPhase) IsFinal() bool { return p == OperationSucceeded || p == OperationFailed }

// OperationStatus is the observed progress of an Operation.
type OperationStatus struct {
	// Phase is Pending, Running, Succeeded or Failed. Succeeded and Failed are final: a finished
	// Operation is never run again.
	// +optional
	Phase OperationPhase `json:"phase,omitempty"`

	// Message says, in one sentence, what the Operation is doing or why it stopped.
	// +optional
	Message string `json:"message,omitempty"`

	// StartTime is when the Operation started running (left Pending).
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// CompletionTime is when the Operation reached Succeeded or Failed.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// ObservedGeneration is the metadata.generation this status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Timeline is where a repave's time went, as the installed server itself reported it: firmware
	// and boot loader, kernel, each cloud-init stage, the user-data's own commands, and for a
	// joining profile the time from the start until its Node was Ready. Steps nobody reported are
	// absent, never estimated.
	// +listType=atomic
	// +optional
	Timeline []TimelineStep `json:"timeline,omitempty"`

	// Faults are the faults a FaultInjection had injected into this repave, decided once when it
	// started.
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	// +optional
	Faults []InjectedFault `json:"faults,omitempty"`

	// Conditions: one per step of the Operation (for a simulator repave: ImageReady,
	// CloudInitReady, NetworkReady, VMRunning, GuestReady, NodeReady), each with a reason and the
	// time it last changed, plus Succeeded when the Operation is finished. They show where time
	// goes and where an Operation stopped.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TimelineStep is one step of a guest's boot and installation.
type TimelineStep struct {
	// Name of the step: firmware-and-loader, kernel, cloud-init-local, cloud-init-network,
	// cloud-init-config, cloud-init-final, user-commands, node-ready.
	Name string `json:"name"`
	// Duration of the step (for node-ready: from the Operation's start).
	Duration metav1.Duration `json:"duration"`
}

// Operation asks for something to be done to a Server, such as a repave with a
// ProvisioningProfile. It runs once; its status tells the truth about every step. Operations on
// one Server run one at a time, in creation order (ties by name); list a Server's Operations with
// `kubectl get operations --field-selector spec.serverRef.name=NAME`.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=op;ops,categories=stargate
// +kubebuilder:selectablefield:JSONPath=`.spec.serverRef.name`
// +kubebuilder:printcolumn:name="Operation",type=string,JSONPath=`.spec.operation`
// +kubebuilder:printcolumn:name="Server",type=string,JSONPath=`.spec.serverRef.name`
// +kubebuilder:printcolumn:name="Profile",type=string,JSONPath=`.spec.provisioningProfileRef.name`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`,priority=1
// +kubebuilder:printcolumn:name="Started",type=date,JSONPath=`.status.startTime`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Operation struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says what to do to which Server. Immutable. (Timeouts compare as durations, so "30m"
	// and "30m0s" are the same spec.)
	// +kubebuilder:validation:XValidation:rule="self.operation == oldSelf.operation && self.serverRef == oldSelf.serverRef && has(self.provisioningProfileRef) == has(oldSelf.provisioningProfileRef) && (!has(self.provisioningProfileRef) || self.provisioningProfileRef == oldSelf.provisioningProfileRef) && has(self.timeout) == has(oldSelf.timeout) && (!has(self.timeout) || duration(self.timeout) == duration(oldSelf.timeout)) && has(self.gracePeriod) == has(oldSelf.gracePeriod) && (!has(self.gracePeriod) || duration(self.gracePeriod) == duration(oldSelf.gracePeriod))",message="an Operation's spec is immutable: create a new Operation to run it again or differently"
	Spec OperationSpec `json:"spec"`
	// Status is the observed progress.
	// +optional
	Status OperationStatus `json:"status,omitempty"`
}

// OperationList is a list of Operations.
//
// +kubebuilder:object:root=true
type OperationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Operation `json:"items"`
}

func init() {
	addKnownTypes(&Operation{}, &OperationList{})
}
