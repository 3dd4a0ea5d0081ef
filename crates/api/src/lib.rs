//! Stowage's custom resource types: group `stowage.io`, version `v1alpha1`.
//!
//! One file per kind; types only, with defaults and validation. The data-path
//! records (compression, artifact) come from stowage-core so both crates speak
//! the same types.

// kube's `printcolumn(name = …, type_ = …)` repeats keys across columns by design.
#![allow(clippy::duplicated_attributes)]

pub mod backup_schedule;
pub mod backup_storage;
pub mod etcd_backup;
pub mod exec_backup;
pub mod exec_restore;
pub mod resource_backup;
pub mod resource_restore;
pub mod resource_set;
mod schema;
pub mod shared;
pub mod snapshot_storage;
pub mod volume_backup;
pub mod volume_restore;

pub use backup_schedule::{
    BackupSchedule, BackupScheduleSpec, BackupScheduleStatus, ConcurrencyPolicy, Retention, RunKind, RunReference,
    RunTemplate, TemplateMetadata,
};
pub use backup_storage::{BackupStorage, BackupStorageSpec, BackupStorageStatus, NamespacedSecretRef};
pub use etcd_backup::{EtcdBackup, EtcdBackupPhase, EtcdBackupSpec, EtcdBackupStatus};
pub use exec_backup::{
    ExecBackup, ExecBackupSpec, ExecCommand, ExecPhase, ExecRunStatus, PodTemplate, PodTemplateMetadata,
};
pub use exec_restore::{BackupRef, ExecRestore, ExecRestoreSpec};
pub use resource_backup::{ResourceBackup, ResourceBackupPhase, ResourceBackupSpec, ResourceBackupStatus};
pub use resource_restore::{ResourceRestore, ResourceRestorePhase, ResourceRestoreSpec, ResourceRestoreStatus};
pub use resource_set::{ResourceSet, ResourceSetSpec};
pub use shared::{
    Algorithm, Artifact, ArtifactStatus, Compression, Encryption, RetainPolicy, SecretKeyRef, StorageRef,
};
pub use volume_backup::{
    ApplicationKind, ApplicationRef, PodHookStatus, VolumeBackup, VolumeBackupPhase, VolumeBackupSpec,
    VolumeBackupStatus, VolumeCopy, VolumeStatus,
};
pub use volume_restore::{
    RestoreSource, RestoreTarget, RestoredVolume, VolumeRestore, VolumeRestorePhase, VolumeRestoreSpec,
    VolumeRestoreStatus,
};

/// The API group of every Stowage kind.
pub const GROUP: &str = "stowage.io";
/// The API version of every Stowage kind.
pub const VERSION: &str = "v1alpha1";

/// The CustomResourceDefinitions of every kind, for `cargo xtask crds` and the test bed, with
/// only the integer formats an API server recognises.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    let mut crds = vec![
        BackupSchedule::crd(),
        BackupStorage::crd(),
        EtcdBackup::crd(),
        ExecBackup::crd(),
        ExecRestore::crd(),
        ResourceSet::crd(),
        ResourceBackup::crd(),
        ResourceRestore::crd(),
        VolumeBackup::crd(),
        VolumeRestore::crd(),
    ];
    crds.iter_mut().for_each(schema::recognised_integer_formats);
    crds
}
