package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ServerSpec describes the machine. In a real datacenter it is inventory; in the simulator it is
// the shape of the VM that stands in for the server.
//
// +kubebuilder:validation:XValidation:rule="!has(self.memory) || quantity(string(self.memory)).compareTo(quantity('512Mi')) >= 0",message="spec.memory must be at least 512Mi: cloud-init and a kubelet do not fit in less"
// +kubebuilder:validation:XValidation:rule="!has(self.disk) || quantity(string(self.disk)).compareTo(quantity('1Gi')) >= 0",message="spec.disk must be at least 1Gi"
type ServerSpec struct {
	// CPUs is the number of CPUs of the server (virtual CPUs in the simulator).
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=128
	// +optional
	CPUs int32 `json:"cpus,omitempty"`

	// Memory is the server's RAM, as a Kubernetes quantity such as 4Gi.
	// +kubebuilder:default="4Gi"
	// +optional
	Memory *resource.Quantity `json:"memory,omitempty"`

	// Disk is the size of the server's root disk, as a Kubernetes quantity such as 20Gi. A repave
	// gives the server a fresh disk of this size.
	// +kubebuilder:default="20Gi"
	// +optional
	Disk *resource.Quantity `json:"disk,omitempty"`

	// MACAddress fixes the MAC address of the server's network interface, as six lower-case
	// colon-separated hex pairs (e.g. 52:54:00:12:34:56). Left empty, a stable locally administered
	// address is derived from the Server's namespace and name, so it survives repaves.
	// The address must be unicast: multicast and broadcast addresses (lowest bit of the first octet
	// set) cannot belong to one network interface. Two Servers with the same MAC on one host: the
	// later repave fails (DuplicateMAC).
	// +kubebuilder:validation:Pattern=`^([0-9a-f]{2}:){5}[0-9a-f]{2}$`
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9a-f][02468ace]')",message="spec.macAddress must be a unicast address: the lowest bit of the first octet must be 0 (e.g. 52:54:00:12:34:56); multicast and broadcast addresses cannot belong to one server"
	// +optional
	MACAddress string `json:"macAddress,omitempty"`

	// BMC gives the Server a Redfish BMC on the datacenter host that owns it (when that host serves
	// Redfish): provisioning tools can then power it and boot it from virtual media as they drive
	// real hardware. status.bmc.address says where.
	// +optional
	BMC *BMCSpec `json:"bmc,omitempty"`
}

// BMCCredentialsSecretType is the type the Secret named by spec.bmc.credentialsSecretRef must have
// (Kubernetes' own type for a username and a password); no other Secret is ever read for it.
const BMCCredentialsSecretType = "kubernetes.io/basic-auth"

// BMCSpec configures a Server's Redfish BMC.
type BMCSpec struct {
	// CredentialsSecretRef names a Secret of type kubernetes.io/basic-auth (keys username and
	// password) in the Server's namespace: the HTTP basic auth credentials of this Server's BMC.
	// kubectl create secret generic NAME --type=kubernetes.io/basic-auth
	// --from-literal=username=admin --from-literal=password=...
	CredentialsSecretRef LocalSecretReference `json:"credentialsSecretRef"`
}

// LocalSecretReference names a Secret in the object's own namespace.
type LocalSecretReference struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// BMCStatus is what the Server's BMC shows.
type BMCStatus struct {
	// Address is the Redfish URL of the Server's ComputerSystem, e.g.
	// https://10.0.0.5:8443/redfish/v1/Systems/dc-simulator.worker-1; copy it into a provisioning
	// tool with the credentials of spec.bmc.
	// +optional
	Address string `json:"address,omitempty"`
	// BootOverride is the boot device the BMC was told to use: target (None, Hdd, Cd, Pxe),
	// enabled (Disabled, Once, Continuous) and mode.
	// +optional
	BootOverride string `json:"bootOverride,omitempty"`
	// VirtualMedia is the URL of the image in the virtual CD drive, if any.
	// +optional
	VirtualMedia string `json:"virtualMedia,omitempty"`
}

// ServerState is a one-word summary of a Server, for humans. Conditions are the truth.
// +kubebuilder:validation:Enum=Available;Provisioning;Ready;Error;Deleting
type ServerState string

const (
	// ServerAvailable means the server exists but runs nothing Stargate installed.
	ServerAvailable ServerState = "Available"
	// ServerProvisioning means an Operation is installing the server right now.
	ServerProvisioning ServerState = "Provisioning"
	// ServerReady means the last repave succeeded and the server is up.
	ServerReady ServerState = "Ready"
	// ServerError means the last Operation failed or the server stopped unexpectedly; see message.
	ServerError ServerState = "Error"
	// ServerDeleting means the Server is being deleted and its resources released.
	ServerDeleting ServerState = "Deleting"
)

// PowerState is whether a server's machine is powered on.
// +kubebuilder:validation:Enum=On;Off;Unknown
type PowerState string

const (
	// PowerOn means the machine runs.
	PowerOn PowerState = "On"
	// PowerOff means the machine is installed but not running.
	PowerOff PowerState = "Off"
	// PowerUnknown means the datacenter could not tell, or holds no machine for the Server.
	PowerUnknown PowerState = "Unknown"
)

// ServerStatus is what Stargate observed about the server.
type ServerStatus struct {
	// State summarises the server: Available, Provisioning, Ready, Error or Deleting.
	// +optional
	State ServerState `json:"state,omitempty"`

	// Message explains the state in one sentence, in particular what went wrong and how to fix it.
	// +optional
	Message string `json:"message,omitempty"`

	// PowerState is On, Off or Unknown, as the datacenter reports it right now. A machine that stops
	// without a powerOff (guest poweroff, crash) turns the Server to Error with reason
	// MachineStopped and an Event.
	// +optional
	PowerState PowerState `json:"powerState,omitempty"`

	// IPAddress is the server's IPv4 address on the provisioning network. It is kept across repaves.
	// +optional
	IPAddress string `json:"ipAddress,omitempty"`

	// MACAddress is the MAC address of the server's network interface.
	// +optional
	MACAddress string `json:"macAddress,omitempty"`

	// Host is the datacenter host (the simulator's --host-id) that owns this Server's machine. A host
	// takes a Server that matches its --server-selector and has no owner; other hosts leave it alone
	// (with a Warning Event) until the owner hands it over, which it does once the Server no longer
	// matches its selector and no Operation runs on it.
	// +optional
	Host string `json:"host,omitempty"`

	// HostEpoch counts the evacuations of this Server: each evacuate Operation that cleared
	// status.host from a lost host increments it. A host that returns fences (destroys) its local
	// machine of a Server it no longer owns.
	// +optional
	HostEpoch int64 `json:"hostEpoch,omitempty"`

	// BMC is the Server's Redfish BMC, when it has one (spec.bmc).
	// +optional
	BMC *BMCStatus `json:"bmc,omitempty"`

	// LastOperation is the name of the last Operation that acted on this server.
	// +optional
	LastOperation string `json:"lastOperation,omitempty"`

	// ProvisioningProfile is the name of the profile the server was last installed with.
	// +optional
	ProvisioningProfile string `json:"provisioningProfile,omitempty"`

	// InstanceID identifies the current installation; it changes on every repave (it is the
	// cloud-init instance-id in the simulator).
	// +optional
	InstanceID string `json:"instanceID,omitempty"`

	// ProvisionedAt is when the current installation finished.
	// +optional
	ProvisionedAt *metav1.Time `json:"provisionedAt,omitempty"`

	// ObservedGeneration is the metadata.generation this status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions are the detailed, authoritative state of the server (Provisioned, ...).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Server is a bare-metal server, or a VM slot in the simulator datacenter. Operations act on it.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.metadata.name.size() <= 63",message="a Server's name becomes the host name and the Node name, so it must be a DNS label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
// +kubebuilder:resource:shortName=srv,categories=stargate
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Power",type=string,JSONPath=`.status.powerState`
// +kubebuilder:printcolumn:name="IP",type=string,JSONPath=`.status.ipAddress`
// +kubebuilder:printcolumn:name="Profile",type=string,JSONPath=`.status.provisioningProfile`
// +kubebuilder:printcolumn:name="Last-Operation",type=string,JSONPath=`.status.lastOperation`
// +kubebuilder:printcolumn:name="CPUs",type=integer,JSONPath=`.spec.cpus`,priority=1
// +kubebuilder:printcolumn:name="Memory",type=string,JSONPath=`.spec.memory`,priority=1
// +kubebuilder:printcolumn:name="MAC",type=string,JSONPath=`.status.macAddress`,priority=1
// +kubebuilder:printcolumn:name="Host",type=string,JSONPath=`.status.host`,priority=1
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Server struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired shape of the server.
	// +optional
	Spec ServerSpec `json:"spec,omitempty"`
	// Status is the observed state of the server.
	// +optional
	Status ServerStatus `json:"status,omitempty"`
}

// ServerList is a list of Servers.
//
// +kubebuilder:object:root=true
type ServerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Server `json:"items"`
}

func init() {
	addKnownTypes(&Server{}, &ServerList{})
}
