//! ExecRestore (namespaced): feeds a stored backup to a restore command's stdin in a Pod.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::exec_backup::{ExecCommand, ExecRunStatus, PodTemplate};
use crate::shared::{SecretKeyRef, StorageRef};

/// A restore run: the backup is read from storage, verified, decrypted and decompressed, and
/// streamed into the stdin of the restore command in a Pod.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "ExecRestore",
    namespaced,
    doc = "One restore run: a stored backup streamed into the stdin of a restore command in a Pod.",
    plural = "execrestores",
    shortname = "er",
    category = "stowage",
    status = "ExecRunStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".spec.backupRef.name"),
    printcolumn(name = "Path", type_ = "string", json_path = ".status.artifact.path", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = one_source)]
pub struct ExecRestoreSpec {
    /// The ExecBackup (in this namespace) to restore. Its restore command, template and
    /// decryption key are used unless given here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_ref: Option<BackupRef>,
    /// Restore an artifact by its path instead (e.g. another cluster's backup): `name` is the
    /// BackupStorage and `path` the artifact's key, which must lie in this namespace's area.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageRef>,
    /// The command that reads the backup on stdin. Required with `storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<ExecCommand>,
    /// The Pod that runs the restore command. Required with `storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplate>,
    /// The private key that decrypts the backup, if it is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption_key: Option<SecretKeyRef>,
}

/// The backup comes from an ExecBackup or from storage, never both; from storage, nothing
/// else says where in it, nor which command and Pod restore it.
fn one_source(schema: &mut schemars::Schema) {
    crate::schema::exactly_one_of(schema, &["backupRef", "storage"]);
    crate::schema::required_with(schema, "storage", &["storage.path", "restore", "template"]);
}

/// An ExecBackup in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRef {
    /// Name of the ExecBackup.
    pub name: String,
}
