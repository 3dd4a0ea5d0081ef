//! ExecBackup (namespaced): one run of a dump command in a Pod, its stdout streamed through
//! compression and encryption into a BackupStorage.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::shared::{ArtifactStatus, Compression, Encryption, RetainPolicy, StorageRef};

/// A backup made by running a command in a Pod and storing what it writes to stdout, e.g.
/// `mysqldump` or `pg_dump`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "ExecBackup",
    namespaced,
    doc = "One backup run: a Pod from the template runs the backup command, and its stdout is compressed, encrypted and stored in a BackupStorage.",
    plural = "execbackups",
    shortname = "eb",
    category = "stowage",
    status = "ExecRunStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.artifact.size"),
    printcolumn(name = "Path", type_ = "string", json_path = ".status.artifact.path", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ExecBackupSpec {
    /// The command whose stdout is the backup.
    pub backup: ExecCommand,
    /// How to restore this backup later: the command that reads the backup on stdin, e.g.
    /// `mysql "$DATABASE"`. An ExecRestore of this backup uses it unless it gives its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<ExecCommand>,
    /// Where the backup goes. Without `path` it is `<name>/<UTC timestamp>.<ext>` under the
    /// namespace's area of the storage.
    pub storage: StorageRef,
    /// How the backup is compressed. Default: gzip level 6.
    #[serde(default)]
    pub compression: Compression,
    /// Encrypt the backup with age to these recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// `Retain` (default) keeps the data in storage when this object is deleted; `Delete`
    /// removes it first.
    #[serde(default)]
    pub retain_policy: RetainPolicy,
    /// The Pod that runs the commands, e.g. the database's client image with `sleep infinity`
    /// as its command, and the credentials in its environment.
    pub template: PodTemplate,
}

/// A command run with `exec` in the Pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecCommand {
    /// Container to run it in. Default: the template's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The command, e.g. `["sh", "-c"]`. It is not run through a shell unless you ask for one.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Arguments appended to the command, e.g. `["mysqldump --single-transaction \"$DATABASE\""]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Fail the run when the command has not finished after this many seconds. Default: 3600
    /// for backups and restores alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub deadline_seconds: Option<u64>,
}

impl ExecCommand {
    /// The full argument vector: command then args.
    pub fn argv(&self) -> Vec<String> {
        self.command.iter().chain(&self.args).cloned().collect()
    }
}

/// A Pod template: labels and annotations, and a full Pod spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels and annotations for the Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PodTemplateMetadata>,
    /// The Pod's spec (`kubectl explain pod.spec`). It is checked when the run starts.
    // Kept as JSON: the full PodSpec schema would make the CRD too large for client-side
    // `kubectl apply`, and a typed field would make one malformed object break the
    // controller's watch for all. `pod_spec()` parses it and says what is wrong.
    #[schemars(schema_with = "crate::shared::any_object")]
    pub spec: serde_json::Value,
}

impl PodTemplate {
    /// The spec as a PodSpec, or a message saying why it is not one.
    pub fn pod_spec(&self) -> Result<PodSpec, String> {
        serde_json::from_value(self.spec.clone()).map_err(|error| format!("template.spec is not a Pod spec: {error}"))
    }
}

/// Labels and annotations of a Pod template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateMetadata {
    /// Labels added to the Pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExecPhase {
    /// Not started yet, or waiting to retry.
    #[default]
    Pending,
    /// The Pod runs the command and the data is streaming.
    Running,
    /// The data is in storage (backup) or was fed to the restore command, which succeeded.
    Succeeded,
    /// The run failed; the conditions, `stderrTail` and Events say why.
    Failed,
}

/// What an ExecBackup or ExecRestore run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecRunStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default)]
    pub phase: ExecPhase,
    /// Ready, InProgress, Successful or Failed; for backups also Restorable, Encrypted and
    /// Compressed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Pod running the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The backup in storage (for restores: the backup that was restored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactStatus>,
    /// Plaintext bytes so far: read from the command (backup) or fed to it (restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_transferred: Option<u64>,
    /// The last lines the command wrote to stderr, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<String>,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}
