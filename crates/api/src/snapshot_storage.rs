//! The CSI snapshot API (`snapshot.storage.k8s.io/v1`): VolumeSnapshot,
//! VolumeSnapshotContent and VolumeSnapshotClass, as the external-snapshotter
//! project defines them.
//!
//! These are external kinds: a cluster's snapshot controller installs their CRDs, so they are
//! not in [`crate::crds`]. volume-snapshot-ctrl uses them, and the test bed's CSI simulator
//! serves them (e2e/manifests/volumesnapshot-crds.yaml is generated from these types).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the three kinds.
pub const GROUP: &str = "snapshot.storage.k8s.io";

/// Annotation that marks a VolumeSnapshotClass as the default for its driver.
pub const DEFAULT_SNAPSHOT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

// The API server refuses CRDs in a `*.k8s.io` group without the
// `api-approved.kubernetes.io` annotation; upstream points it at the pull
// request that approved the API.

/// A user's request for a point-in-time snapshot of a PersistentVolumeClaim, or
/// for binding to a snapshot that already exists.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    derive = "PartialEq",
    shortname = "vs",
    category = "snapshots",
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-csi/external-snapshotter/pull/419"
    ),
    doc = "A user's request for a point-in-time snapshot of a PersistentVolumeClaim, or for binding to a snapshot that already exists.",
    printcolumn(
        name = "ReadyToUse",
        type_ = "boolean",
        json_path = ".status.readyToUse",
        description = "Whether the snapshot can be used to restore a volume."
    ),
    printcolumn(
        name = "SourcePVC",
        type_ = "string",
        json_path = ".spec.source.persistentVolumeClaimName",
        description = "The PVC this snapshot is (or will be) taken from."
    ),
    printcolumn(
        name = "SourceSnapshotContent",
        type_ = "string",
        json_path = ".spec.source.volumeSnapshotContentName",
        description = "The pre-existing VolumeSnapshotContent this snapshot binds to."
    ),
    printcolumn(
        name = "RestoreSize",
        type_ = "string",
        json_path = ".status.restoreSize",
        description = "The smallest volume that can hold a restore of this snapshot."
    ),
    printcolumn(
        name = "SnapshotClass",
        type_ = "string",
        json_path = ".spec.volumeSnapshotClassName",
        description = "The VolumeSnapshotClass requested by this snapshot."
    ),
    printcolumn(
        name = "SnapshotContent",
        type_ = "string",
        json_path = ".status.boundVolumeSnapshotContentName",
        description = "The VolumeSnapshotContent this snapshot is bound to."
    ),
    printcolumn(
        name = "CreationTime",
        type_ = "date",
        json_path = ".status.creationTime",
        description = "When the storage system took the point-in-time snapshot."
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "The snapshot the user asks for.")]
pub struct VolumeSnapshotSpec {
    /// Where the snapshot comes from: a PVC to snapshot now, or an existing
    /// VolumeSnapshotContent. Exactly one of the two must be set. Immutable.
    pub source: VolumeSnapshotSource,
    /// The VolumeSnapshotClass to use. When omitted, the default class of the
    /// source volume's CSI driver is used. Must not be the empty string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// Where a VolumeSnapshot comes from. Exactly one field must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [
    {"required": ["persistentVolumeClaimName"]},
    {"required": ["volumeSnapshotContentName"]}
]))]
pub struct VolumeSnapshotSource {
    /// The PersistentVolumeClaim, in the snapshot's namespace, to take a new
    /// snapshot of. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    /// A pre-existing VolumeSnapshotContent that this snapshot represents.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
}

/// The observed state of a VolumeSnapshot. Before using the snapshot, check
/// that it and its VolumeSnapshotContent point at each other.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    /// The VolumeSnapshotContent this snapshot is bound to. Unset until the
    /// snapshot has been bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    /// When the storage system cut the point-in-time snapshot. Data written to
    /// the source volume after this moment is not in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// Whether the snapshot can be used to restore a volume. Unset means unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The smallest volume that can hold a restore of this snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    /// The last error seen while creating the snapshot, if any. Cleared on
    /// success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    /// The VolumeGroupSnapshot this snapshot belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_name: Option<String>,
}

/// An error seen while creating or deleting a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    /// What went wrong. Never contains secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the error was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// What happens to a VolumeSnapshotContent and its physical snapshot when its
/// VolumeSnapshot is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the VolumeSnapshotContent and the physical snapshot.
    #[default]
    Delete,
    /// Keep the VolumeSnapshotContent and the physical snapshot.
    Retain,
}

/// A snapshot that exists (or is being taken) in the storage system.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshotContent",
    status = "VolumeSnapshotContentStatus",
    derive = "PartialEq",
    shortname = "vsc",
    shortname = "vscs",
    category = "snapshots",
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-csi/external-snapshotter/pull/419"
    ),
    doc = "A snapshot that exists (or is being taken) in the storage system.",
    printcolumn(
        name = "ReadyToUse",
        type_ = "boolean",
        json_path = ".status.readyToUse",
        description = "Whether the snapshot can be used to restore a volume."
    ),
    printcolumn(
        name = "RestoreSize",
        type_ = "integer",
        json_path = ".status.restoreSize",
        description = "The size of the snapshot in bytes."
    ),
    printcolumn(
        name = "DeletionPolicy",
        type_ = "string",
        json_path = ".spec.deletionPolicy",
        description = "Whether the physical snapshot is deleted with its VolumeSnapshot."
    ),
    printcolumn(
        name = "Driver",
        type_ = "string",
        json_path = ".spec.driver",
        description = "The CSI driver that took the snapshot."
    ),
    printcolumn(
        name = "VolumeSnapshotClass",
        type_ = "string",
        json_path = ".spec.volumeSnapshotClassName",
        description = "The VolumeSnapshotClass the snapshot was taken with."
    ),
    printcolumn(
        name = "VolumeSnapshot",
        type_ = "string",
        json_path = ".spec.volumeSnapshotRef.name",
        description = "The VolumeSnapshot bound to this content."
    ),
    printcolumn(
        name = "VolumeSnapshotNamespace",
        type_ = "string",
        json_path = ".spec.volumeSnapshotRef.namespace",
        description = "The namespace of the VolumeSnapshot bound to this content."
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "The snapshot in the storage system and the VolumeSnapshot it is bound to.")]
pub struct VolumeSnapshotContentSpec {
    /// Whether this content and its physical snapshot are deleted when the bound
    /// VolumeSnapshot is deleted. Taken from the VolumeSnapshotClass for
    /// dynamically taken snapshots.
    pub deletion_policy: DeletionPolicy,
    /// The CSI driver that takes and holds the snapshot.
    pub driver: String,
    /// The volume to snapshot, or the snapshot that already exists. Immutable.
    pub source: VolumeSnapshotContentSource,
    /// The mode (Filesystem or Block) of the snapshotted volume. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_volume_mode: Option<String>,
    /// The VolumeSnapshotClass this snapshot was (or will be) taken with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    /// The VolumeSnapshot this content is bound to (name and namespace are
    /// required). Immutable.
    pub volume_snapshot_ref: ObjectReference,
}

/// The source of a VolumeSnapshotContent: a volume to snapshot, or an existing
/// snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSource {
    /// The CSI id of an existing snapshot. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    /// The CSI id of the volume to take the snapshot of. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
}

/// The observed state of a VolumeSnapshotContent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentStatus {
    /// When the storage system cut the snapshot, in nanoseconds since the Unix
    /// epoch (as `date +%s%N` prints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<i64>,
    /// The last error seen while taking the snapshot, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    /// Whether the snapshot can be used to restore a volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The size of the snapshot in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub restore_size: Option<i64>,
    /// The CSI id of the snapshot in the storage system. Unset while the
    /// snapshot is being taken or when taking it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    /// The CSI id of the group snapshot this snapshot belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_handle: Option<String>,
}

/// The parameters a storage system uses to take snapshots. A VolumeSnapshot
/// names its class in `spec.volumeSnapshotClassName`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshotClass",
    no_spec,
    derive = "PartialEq",
    shortname = "vsclass",
    shortname = "vsclasses",
    category = "snapshots",
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-csi/external-snapshotter/pull/419"
    ),
    doc = "The parameters a storage system uses to take snapshots. A VolumeSnapshot names its class in spec.volumeSnapshotClassName.",
    printcolumn(name = "Driver", type_ = "string", json_path = ".driver"),
    printcolumn(
        name = "DeletionPolicy",
        type_ = "string",
        json_path = ".deletionPolicy",
        description = "Whether snapshots taken with this class are deleted with their VolumeSnapshot."
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClassFields {
    /// The CSI driver that handles this class.
    pub driver: String,
    /// Whether a VolumeSnapshotContent taken with this class is deleted when its
    /// VolumeSnapshot is deleted.
    pub deletion_policy: DeletionPolicy,
    /// Driver-specific parameters for taking snapshots, opaque to Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
}
