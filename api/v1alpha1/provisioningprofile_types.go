package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultImageURL is the OS image a profile installs when it names none: Ubuntu 22.04 LTS.
const DefaultImageURL = "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img"

// ImageSource says where an OS image comes from and how to verify it.
type ImageSource struct {
	// URL of a bootable cloud image with cloud-init: a qcow2 image without backing or external
	// data file, or a raw disk with a partition table (anything else, e.g. an HTML page, a VMDK,
	// fails with reason UnsupportedImage). An http or https URL names a host; a file URL names
	// none (file:///abs/path). Images are downloaded once per URL and cached on the
	// datacenter host, and the host decides what it fetches:
	// http and https URLs may not reach loopback, link-local (cloud metadata), multicast or
	// unspecified addresses, the host's own addresses or its VM network, also after a redirect
	// (at most 5, never from https to http), unless the simulator's operator allows them with
	// --allow-image-hosts; file:///abs/path URLs are read only below directories the operator
	// lists with --image-dir (none by default), symlinks resolved. A refused URL fails with reason
	// ImageSourceNotAllowed. Downloads are limited in size (--max-image-size, default 20Gi:
	// ImageTooLarge) and fail when no data arrives for a minute (DownloadStalled; the next
	// Operation tries again).
	// +kubebuilder:default="https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('http://') || self.startsWith('https://') || self.startsWith('file:///')",message="image.url must be an http://, https:// or file:/// URL"
	// +kubebuilder:validation:XValidation:rule="!(self.startsWith('http://') || self.startsWith('https://')) || (isURL(self) && url(self).getHostname() != '')",message="an http:// or https:// image.url must be a URL that names a host, e.g. https://images.example/os.qcow2"
	// +optional
	URL string `json:"url,omitempty"`

	// Checksum of the image as "sha256:<64 hex digits>" or "sha512:<128 hex digits>". When set, a
	// download that does not match is discarded and the Operation fails. Set it for any image that
	// is not a moving "current" URL.
	// +kubebuilder:validation:Pattern=`^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$`
	// +optional
	Checksum string `json:"checksum,omitempty"`
}

// UserDataSecretType is the type a Secret must have for a profile's cloudInitSecretRef to use it.
// Only Secrets created for the purpose opt in, so a user who may create profiles cannot have any
// other Secret of the namespace (service-account tokens, TLS keys, ...) copied into a VM they boot.
// Create one with: kubectl create secret generic NAME --type=stargate.io/user-data --from-file=user-data=FILE
const UserDataSecretType = "stargate.io/user-data"

// SecretKeyReference names a key of a Secret in the profile's namespace.
type SecretKeyReference struct {
	// Name of the Secret, in the same namespace as the profile.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Key within the Secret's data; default "user-data".
	// +kubebuilder:default="user-data"
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`
}

// ProvisioningProfileSpec is how to install a server: which OS image, and the cloud-init
// user-data that configures it on first boot.
//
// +kubebuilder:validation:XValidation:rule="has(self.cloudInit) != has(self.cloudInitSecretRef)",message="set exactly one of spec.cloudInit (inline user-data) and spec.cloudInitSecretRef (user-data in a Secret, for join tokens and other secrets)"
type ProvisioningProfileSpec struct {
	// CloudInit is the cloud-init user-data, in any format cloud-init accepts: "#cloud-config" YAML,
	// a shell script ("#!"), a MIME multi-part archive, ... A "#cloud-config" document must be
	// valid YAML. It is handed to the server as-is (NoCloud user-data in the simulator), written
	// only to files readable by root. Prefer cloudInitSecretRef when it carries secrets.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=262144
	// +optional
	CloudInit string `json:"cloudInit,omitempty"`

	// CloudInitSecretRef takes the user-data from a Secret instead of spec.cloudInit: use it when
	// the user-data carries secrets such as kubeadm join tokens, so that reading profiles does not
	// reveal them. Exactly one of cloudInit and cloudInitSecretRef is set. The Secret must be of type
	// "stargate.io/user-data" (kubectl create secret generic NAME --type=stargate.io/user-data
	// --from-file=user-data=FILE): no other Secret is ever read.
	// +optional
	CloudInitSecretRef *SecretKeyReference `json:"cloudInitSecretRef,omitempty"`

	// Image is the OS image to install.
	// +kubebuilder:default={}
	// +optional
	Image ImageSource `json:"image,omitempty"`

	// Installation is the part of the installation that is the same on every server of this
	// profile (packages, files, services), apart from the per-instance user-data (cloudInit or
	// cloudInitSecretRef: hostname, network, joining a cluster). When set, it is baked once into
	// a golden image: a datacenter boots the OS image with it, lets cloud-init finish, cleans the
	// instance state and keeps the disk; later repaves boot the golden image and run only the
	// per-instance user-data. A golden image is reused while the OS image (by digest) and this
	// field stay the same, by profiles of this namespace only; changing either bakes again.
	// +optional
	Installation *Installation `json:"installation,omitempty"`

	// JoinsCluster declares that the user-data joins the server to the management cluster as a
	// Node named after the Server. A repave with this profile then succeeds only when that Node is
	// Ready, and the stale Node of the previous installation is deleted before the new one joins.
	// Node names are cluster-wide while Server names are per namespace, so Stargate deletes, or
	// trusts as Ready, only a Node whose InternalIP is the Server's address. A repave fails before
	// touching the server when a Node of that name exists that is not the Server's
	// (NodeNameTaken), or when a Server of the same name in another namespace is installed, or
	// being installed, with a joining profile (NodeNameConflict): give one of them another name.
	// +optional
	JoinsCluster bool `json:"joinsCluster,omitempty"`
}

// Installation is the reusable part of a profile's installation.
type Installation struct {
	// CloudInit is the cloud-init user-data the golden image is baked with, in any format
	// cloud-init accepts ("#cloud-config" must be valid YAML). It must not depend on the server
	// (the bake VM has a throwaway hostname and address) and must not hold secrets: what it
	// installs is kept in an image cached on the host. It must not power off or reboot the
	// machine itself: the datacenter does that when cloud-init has finished. No repave waits for a
	// bake: while the golden image does not exist, a repave runs this installation and then the
	// per-instance user-data in one boot (a MIME multi-part user-data), and the golden image is
	// baked in the background for later repaves. A bake that fails caches nothing; the repaves
	// after it say why in ImageReady's message.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=262144
	CloudInit string `json:"cloudInit"`
}

// ProvisioningProfileStatus is what a controller found when it checked the profile.
type ProvisioningProfileStatus struct {
	// ObservedGeneration is the metadata.generation the conditions were computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Valid says whether the user-data passed the checks made before any server is
	// touched (for example, "#cloud-config" must be YAML).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ProvisioningProfile is a reusable recipe for installing servers: an OS image plus cloud-init.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=pp;profile,categories=stargate
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.image.url`
// +kubebuilder:printcolumn:name="Joins-Cluster",type=boolean,JSONPath=`.spec.joinsCluster`
// +kubebuilder:printcolumn:name="Valid",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ProvisioningProfile struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the recipe.
	Spec ProvisioningProfileSpec `json:"spec"`
	// Status is what a controller found when it checked the profile.
	// +optional
	Status ProvisioningProfileStatus `json:"status,omitempty"`
}

// ProvisioningProfileList is a list of ProvisioningProfiles.
//
// +kubebuilder:object:root=true
type ProvisioningProfileList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProvisioningProfile `json:"items"`
}

func init() {
	addKnownTypes(&ProvisioningProfile{}, &ProvisioningProfileList{})
}
