package v1alpha1

import (
	"strings"

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

	// BMC has two meanings. Without bmc.address (the simulator): the datacenter host that owns the
	// Server serves a Redfish BMC for it (when that host serves Redfish), so that provisioning tools
	// can power it and boot it from virtual media as they drive real hardware; status.bmc.address
	// says where. With bmc.address (a Redfish datacenter, --provider redfish): the Server is a real
	// machine and Stargate drives the existing BMC at that address to install and power it.
	// +optional
	BMC *BMCSpec `json:"bmc,omitempty"`

	// RootDeviceHint chooses the disk the installer writes the image to on a real server (Redfish
	// datacenter). Without one, the server must have exactly one eligible disk. The virtual CD the
	// installer booted from is never chosen.
	// +optional
	RootDeviceHint *RootDeviceHint `json:"rootDeviceHint,omitempty"`

	// Network is the static network of a real server (Redfish datacenter): the installer uses it to
	// download the image and the installed OS gets it through cloud-init. Required for a repave in a
	// Redfish datacenter (a bare server has no DHCP Stargate controls); ignored by the simulator,
	// which assigns addresses from its own network.
	// +optional
	Network *StaticNetwork `json:"network,omitempty"`
}

// RootDeviceHint selects a disk; every field set must match.
//
// +kubebuilder:validation:XValidation:rule="!has(self.minSize) || quantity(string(self.minSize)).compareTo(quantity('0')) > 0",message="spec.rootDeviceHint.minSize must be a positive size such as 100Gi"
type RootDeviceHint struct {
	// Serial is the disk's serial number, as the kernel reports it (exact match, case-insensitive).
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[ -~]*[!-~][ -~]*$`
	// +optional
	Serial string `json:"serial,omitempty"`
	// WWN is the disk's World Wide Name, e.g. 0x5000c500a1b2c3d4 (exact match, case-insensitive).
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[ -~]*[!-~][ -~]*$`
	// +optional
	WWN string `json:"wwn,omitempty"`
	// MinSize excludes smaller disks, e.g. 100Gi.
	// +optional
	MinSize *resource.Quantity `json:"minSize,omitempty"`
}

// StaticNetwork is one static IP configuration of a server's network interface. That the gateway
// lies on the address's subnet is checked when a repave starts (a CEL rule relating the two costs
// more than the API server allows).
type StaticNetwork struct {
	// MACAddress of the interface to configure, six lower-case colon-separated hex pairs.
	// +kubebuilder:validation:Pattern=`^([0-9a-f]{2}:){5}[0-9a-f]{2}$`
	MACAddress string `json:"macAddress"`
	// Address is the server's IP address with its prefix length, e.g. 10.0.0.11/24. Unset, the
	// Redfish datacenter gives one of its address pool (--address-pool), kept across repaves and
	// shown in status.ipAddress, with the pool's gateway and DNS where these fields name none.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self).prefixLength() > 0 && cidr(self).ip().isGlobalUnicast()",message="spec.network.address must be a unicast address with a prefix length, e.g. 10.0.0.11/24"
	// +optional
	Address string `json:"address,omitempty"`
	// Gateway is the default route, an address on Address's subnet; without it only the subnet is
	// reachable.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="spec.network.gateway must be an IP address"
	// +optional
	Gateway string `json:"gateway,omitempty"`
	// DNS servers, at most 3.
	// +kubebuilder:validation:MaxItems=3
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.all(a, isIP(a))",message="spec.network.dns entries must be IP addresses"
	// +listType=atomic
	// +optional
	DNS []string `json:"dns,omitempty"`
}

// BMCCredentialsSecretType is the type the Secret named by spec.bmc.credentialsSecretRef must have
// (Kubernetes' own type for a username and a password); no other Secret is ever read for it.
const BMCCredentialsSecretType = "kubernetes.io/basic-auth"

// BMCSpec configures a Server's Redfish BMC.
//
// +kubebuilder:validation:XValidation:rule="!has(self.address) || !self.address.startsWith('https://') || has(self.caSecretRef) || (has(self.insecureSkipVerify) && self.insecureSkipVerify)",message="spec.bmc.address is https: name the CA that signed the BMC's certificate (spec.bmc.caSecretRef) or opt out of verifying it (spec.bmc.insecureSkipVerify: true)"
// +kubebuilder:validation:XValidation:rule="has(self.address) || (!has(self.systemID) && !has(self.caSecretRef) && !has(self.insecureSkipVerify))",message="spec.bmc.systemID, caSecretRef and insecureSkipVerify apply to a BMC Stargate drives: set spec.bmc.address too"
type BMCSpec struct {
	// CredentialsSecretRef names a Secret of type kubernetes.io/basic-auth (keys username and
	// password) in the Server's namespace: the HTTP basic auth credentials of this Server's BMC
	// (the BMC Stargate serves, or the one at address it drives).
	// kubectl create secret generic NAME --type=kubernetes.io/basic-auth
	// --from-literal=username=admin --from-literal=password=...
	CredentialsSecretRef LocalSecretReference `json:"credentialsSecretRef"`

	// Address is the Redfish URL of the server's existing BMC, e.g. https://10.0.0.50 or
	// https://bmc-r1-u7.example:8443, with no path other than /redfish/v1. Set, Stargate drives this
	// BMC (Redfish datacenter); unset, the simulator serves a BMC for the Server. The controller
	// connects only to BMC networks its operator allows (--bmc-networks).
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && (url(self).getScheme() == 'https' || url(self).getScheme() == 'http') && url(self).getHostname() != '' && (url(self).getEscapedPath() == '' || url(self).getEscapedPath() == '/' || url(self).getEscapedPath() == '/redfish/v1' || url(self).getEscapedPath() == '/redfish/v1/') && !self.contains('@') && !self.contains('?') && !self.contains('#')",message="spec.bmc.address must be an http(s) URL of a BMC without credentials, query or fragment, and with no path other than /redfish/v1"
	// +optional
	Address string `json:"address,omitempty"`

	// SystemID names the BMC's ComputerSystem (its Id, the last segment of its path, or its UUID)
	// when the BMC manages several; unset, the BMC must manage exactly one.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]*$`
	// +optional
	SystemID string `json:"systemID,omitempty"`

	// CASecretRef names a Secret in the Server's namespace whose key ca.crt holds the PEM CA
	// certificates that verify the BMC's https certificate.
	// +optional
	CASecretRef *LocalSecretReference `json:"caSecretRef,omitempty"`

	// InsecureSkipVerify accepts any certificate from the BMC: anyone on the path to it can then read
	// its credentials. An explicit opt-in for BMCs with self-signed certificates; status.bmc.tls
	// shows it.
	// +optional
	InsecureSkipVerify bool `json:"insecureSkipVerify,omitempty"`
}

// BMCCASecretKey is the key of spec.bmc.caSecretRef's Secret that holds the PEM CA bundle.
const BMCCASecretKey = "ca.crt"

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
	// TLS says how Stargate trusts the BMC it drives (spec.bmc.address): Verified (https, its
	// certificate checked against spec.bmc.caSecretRef), NotVerified (https with
	// spec.bmc.insecureSkipVerify) or PlainHTTP. Empty for a BMC the simulator serves.
	// +optional
	TLS BMCTLS `json:"tls,omitempty"`
}

// BMCTLS is how a BMC's identity is checked.
// +kubebuilder:validation:Enum=Verified;NotVerified;PlainHTTP
type BMCTLS string

// The ways a BMC's identity is checked.
const (
	BMCTLSVerified    BMCTLS = "Verified"
	BMCTLSNotVerified BMCTLS = "NotVerified"
	BMCTLSPlainHTTP   BMCTLS = "PlainHTTP"
)

// DrivesBMC reports whether Stargate drives an existing BMC for this Server (spec.bmc.address), as
// opposed to serving one (the simulator).
func (s *ServerSpec) DrivesBMC() bool { return s.BMC != nil && s.BMC.Address != "" }

// TLS is how a BMC Stargate drives is trusted, from its spec.
func (b *BMCSpec) TLS() BMCTLS {
	switch {
	case !strings.HasPrefix(b.Address, "https://"):
		return BMCTLSPlainHTTP
	case b.InsecureSkipVerify:
		return BMCTLSNotVerified
	}
	return BMCTLSVerified
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
