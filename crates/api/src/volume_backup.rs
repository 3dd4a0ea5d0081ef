//! VolumeBackup (namespaced): crash- or application-consistent CSI snapshots of an
//! application's PersistentVolumeClaims, taken between freeze and thaw hooks, optionally
//! copied off-cluster into a BackupStorage.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::shared::{ArtifactStatus, Compression, Encryption, RetainPolicy, StorageRef};

/// Pod annotation: the freeze command, run with `sh -c` in the hook container before the
/// snapshots are taken (e.g. `mysql -e 'flush tables with read lock'`).
pub const PRE_HOOK_ANNOTATION: &str = "stowage.io/pre-hook";
/// Pod annotation: the thaw command, run with `sh -c` once every snapshot has its cut point.
pub const POST_HOOK_ANNOTATION: &str = "stowage.io/post-hook";
/// Pod annotation: the container the hooks run in. Default: the Pod's first container.
pub const HOOK_CONTAINER_ANNOTATION: &str = "stowage.io/hook-container";
/// Label on every VolumeSnapshot (and temporary object) a VolumeBackup creates: its name.
pub const VOLUME_BACKUP_LABEL: &str = "stowage.io/volume-backup";

/// Default of `hookTimeoutSeconds`.
pub const DEFAULT_HOOK_TIMEOUT_SECONDS: u64 = 30;
/// Default of `maxFreezeSeconds`.
pub const DEFAULT_MAX_FREEZE_SECONDS: u64 = 60;

/// Point-in-time CSI snapshots of an application's volumes, with freeze and thaw hooks from
/// its Pods' annotations, and optionally a copy of each snapshot's files in a BackupStorage.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "VolumeBackup",
    namespaced,
    doc = "Consistent CSI snapshots of an application's volumes: the Pods' stowage.io/pre-hook runs (freeze), one VolumeSnapshot per PVC is cut, stowage.io/post-hook runs (thaw); with spec.copy each snapshot's files are also stored in a BackupStorage.",
    plural = "volumebackups",
    shortname = "vb",
    category = "stowage",
    status = "VolumeBackupStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Volumes", type_ = "integer", json_path = ".status.volumeCount"),
    printcolumn(name = "Frozen(ms)", type_ = "integer", json_path = ".status.frozenMilliseconds"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.copiedSize", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = one_target)]
pub struct VolumeBackupSpec {
    /// The application whose volumes to snapshot: every PVC its Pods mount. Give exactly one
    /// of `applicationRef`, `pvcNames` and `pvcSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_ref: Option<ApplicationRef>,
    /// Names of the PersistentVolumeClaims (in this namespace) to snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pvc_names: Vec<String>,
    /// A label selector choosing the PersistentVolumeClaims (in this namespace) to snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_selector: Option<LabelSelector>,
    /// The VolumeSnapshotClass of the snapshots. Default: the driver's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    /// How long each pre-hook and post-hook may run before it counts as failed. Default: 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub hook_timeout_seconds: Option<u64>,
    /// The longest the application may stay frozen: when the snapshots have not all been cut
    /// this many seconds after the first pre-hook started, the application is thawed and the
    /// backup fails. Default: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_freeze_seconds: Option<u64>,
    /// Also copy each snapshot's files off-cluster: a temporary PVC is made from the snapshot,
    /// mounted read-only by a temporary Pod, and a tar of it is compressed, encrypted and
    /// stored, one artifact per volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<VolumeCopy>,
    /// `Retain` (default) keeps the VolumeSnapshots and copies when this object is deleted;
    /// `Delete` deletes them first.
    #[serde(default)]
    pub retain_policy: RetainPolicy,
}

impl VolumeBackupSpec {
    /// `hookTimeoutSeconds` or its default.
    pub fn hook_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.hook_timeout_seconds.unwrap_or(DEFAULT_HOOK_TIMEOUT_SECONDS))
    }

    /// `maxFreezeSeconds` or its default.
    pub fn max_freeze(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.max_freeze_seconds.unwrap_or(DEFAULT_MAX_FREEZE_SECONDS))
    }
}

/// The volumes are named one way only.
fn one_target(schema: &mut schemars::Schema) {
    crate::schema::exactly_one_of(schema, &["applicationRef", "pvcNames", "pvcSelector"]);
}

/// A workload in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRef {
    /// `Deployment` or `StatefulSet`.
    pub kind: ApplicationKind,
    /// Name of the workload.
    pub name: String,
}

/// The kinds of workload Stowage can snapshot and re-point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApplicationKind {
    /// An apps/v1 Deployment.
    #[default]
    Deployment,
    /// An apps/v1 StatefulSet (its volumeClaimTemplates' PVCs included).
    StatefulSet,
}

impl std::fmt::Display for ApplicationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplicationKind::Deployment => "Deployment",
            ApplicationKind::StatefulSet => "StatefulSet",
        })
    }
}

/// Where and how each snapshot's files are copied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeCopy {
    /// The BackupStorage and a path template. `.Name` is the VolumeBackup's name; the PVC's
    /// name is added to the rendered path (`<path>/<pvc>.tar.gz`). Default:
    /// `<name>/<UTC timestamp>/<pvc>.tar.<ext>`.
    pub storage: StorageRef,
    /// How the tar stream is compressed. Default: gzip level 6.
    #[serde(default)]
    pub compression: Compression,
    /// Encrypt the copies with age to these recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Image of the temporary Pod that reads the snapshot (it needs `tar` and `sleep`).
    /// Default: busybox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Where a VolumeBackup is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VolumeBackupPhase {
    /// Not started yet.
    #[default]
    Pending,
    /// Freezing, snapshotting, thawing, waiting for the snapshots or copying.
    Running,
    /// Every snapshot is ready to use (and copied, with `copy`).
    Succeeded,
    /// The backup failed; the conditions and Events say why. The application was thawed.
    Failed,
}

impl VolumeBackupPhase {
    /// Succeeded or Failed: nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(self, VolumeBackupPhase::Succeeded | VolumeBackupPhase::Failed)
    }
}

/// What a VolumeBackup did, step by step and volume by volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default)]
    pub phase: VolumeBackupPhase,
    /// One per step: Frozen, SnapshotsCreated, Thawed, SnapshotsReady, Copied (with `copy`),
    /// and Ready for the whole backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Pods that mount the volumes, and their hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodHookStatus>,
    /// One entry per PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeStatus>,
    /// Number of volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_count: Option<u32>,
    /// When the first pre-hook started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_at: Option<Time>,
    /// When the last post-hook finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thawed_at: Option<Time>,
    /// How long the application stayed frozen, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_milliseconds: Option<u64>,
    /// Total stored size of the copies, for people, e.g. "1.5 GiB".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_size: Option<String>,
    /// When the backup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// A Pod that mounts a backed-up volume, and its hooks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodHookStatus {
    /// Name of the Pod.
    pub pod: String,
    /// The container the hooks run in.
    pub container: String,
    /// The freeze command (`stowage.io/pre-hook`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_hook: Option<String>,
    /// The thaw command (`stowage.io/post-hook`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_hook: Option<String>,
    /// True once the pre-hook succeeded.
    #[serde(default)]
    pub frozen: bool,
    /// True once the post-hook succeeded (or was not needed).
    #[serde(default)]
    pub thawed: bool,
}

/// One backed-up PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// Name of the PersistentVolumeClaim.
    pub pvc: String,
    /// Its StorageClass, for restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Its access modes, for restores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// Its requested size, for restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    /// The VolumeSnapshot taken of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot: Option<String>,
    /// When the snapshot was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// Whether the snapshot can be restored from.
    #[serde(default)]
    pub ready_to_use: bool,
    /// The smallest volume a restore of the snapshot needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    /// The copy of the snapshot's files in storage (with `copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactStatus>,
}
