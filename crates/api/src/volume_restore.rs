//! VolumeRestore (namespaced): new PVCs from a VolumeBackup's snapshots or copies, and
//! optionally the application re-pointed at them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::shared::SecretKeyRef;
use crate::volume_backup::ApplicationRef;

/// Restores a VolumeBackup into new PersistentVolumeClaims and, with a target application,
/// re-points it at them: scaled to zero, its volumes patched to the new claims, scaled back.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "VolumeRestore",
    namespaced,
    doc = "Restores a VolumeBackup into new PersistentVolumeClaims (from its snapshots or from its copies in storage) and optionally re-points a Deployment or StatefulSet at them.",
    plural = "volumerestores",
    shortname = "vr",
    category = "stowage",
    status = "VolumeRestoreStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".spec.volumeBackupName"),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreSpec {
    /// The VolumeBackup (in this namespace) to restore.
    pub volume_backup_name: String,
    /// `Snapshot` (default): new PVCs from the VolumeSnapshots. `Copy`: empty new PVCs filled
    /// from the copies in storage (the backup needs `copy`).
    #[serde(default)]
    pub source: RestoreSource,
    /// What to re-point. Without it only the new PVCs are created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RestoreTarget>,
    /// Names of the new PVCs. Variables: `<pvc>` (the backed-up PVC's name) and `<short id>`
    /// (five characters of this restore's UID). Default: `<pvc>-restored-<short id>`.
    /// For a StatefulSet target, `<pvc>` is the claim template's name (e.g. `data`), and each
    /// replica's PVC is `<new name>-<statefulset>-<ordinal>`, as the StatefulSet names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_name_template: Option<String>,
    /// StorageClass of the new PVCs. Default: the backed-up PVC's class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Delete the PVCs the application used before, once it runs on the new ones.
    #[serde(default, rename = "deleteOldPVCs")]
    pub delete_old_pvcs: bool,
    /// The private key that decrypts encrypted copies. Default: the backup's
    /// `copy.encryption.decryptionKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption_key: Option<SecretKeyRef>,
}

/// Where the restored data comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestoreSource {
    /// The VolumeSnapshots (a PVC with the snapshot as `dataSource`).
    #[default]
    Snapshot,
    /// The copies in the BackupStorage (an empty PVC filled by a Pod that untars the copy).
    Copy,
}

/// The application to re-point at the new PVCs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// The Deployment or StatefulSet whose volumes move to the new PVCs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_ref: Option<ApplicationRef>,
}

/// Where a VolumeRestore is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VolumeRestorePhase {
    /// Not started yet.
    #[default]
    Pending,
    /// Checking, scaling down, creating PVCs, re-pointing or scaling up.
    Running,
    /// The new PVCs hold the data and the application (if any) runs on them.
    Succeeded,
    /// The restore failed; the conditions and Events say why. The application was left on, or
    /// put back on, its old claims and replicas.
    Failed,
}

impl VolumeRestorePhase {
    /// Succeeded or Failed: nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(self, VolumeRestorePhase::Succeeded | VolumeRestorePhase::Failed)
    }
}

/// What a VolumeRestore did, step by step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default)]
    pub phase: VolumeRestorePhase,
    /// One per step (e.g. Checked, ScaledDown, PVCsCreated, Repointed, ScaledUp, OldPVCsDeleted)
    /// and Ready for the whole restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One entry per restored PVC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<RestoredVolume>,
    /// The replicas the application had before it was scaled to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_replicas: Option<i32>,
    /// When the restore started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the restore finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// A PVC made by the restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoredVolume {
    /// The backed-up PVC.
    pub source_pvc: String,
    /// The new PVC holding the restored data.
    pub pvc: String,
    /// The VolumeSnapshot it was made from (source Snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot: Option<String>,
    /// The copy's path in storage it was filled from (source Copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_path: Option<String>,
    /// True once the new PVC holds the data.
    #[serde(default)]
    pub restored: bool,
}
