//! ResourceBackup (cluster-scoped): the objects of a ResourceSet, streamed as one archive
//! into a BackupStorage.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::shared::{ArtifactStatus, Compression, Encryption, StorageRef};

/// The key of the encryption configuration Secret that holds the configuration, as the
/// API server's `--encryption-provider-config` file is usually named.
pub const ENCRYPTION_CONFIG_KEY: &str = "encryption-provider-config.yaml";

/// One backup of the Kubernetes objects selected by a ResourceSet.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "ResourceBackup",
    doc = "A backup of the Kubernetes objects a ResourceSet selects, streamed as one tar archive (one JSON file per object) into a BackupStorage. Restore it with a ResourceRestore.",
    plural = "resourcebackups",
    shortname = "rbk",
    category = "stowage",
    status = "ResourceBackupStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Objects", type_ = "integer", json_path = ".status.objectCount"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.artifact.size"),
    printcolumn(name = "ResourceSet", type_ = "string", json_path = ".spec.resourceSetName"),
    printcolumn(name = "Path", type_ = "string", json_path = ".status.artifact.path", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ResourceBackupSpec {
    /// Name of the ResourceSet whose objects to back up.
    pub resource_set_name: String,
    /// Where the archive goes.
    pub storage: StorageRef,
    /// How the archive is compressed. Default: gzip level 6.
    #[serde(default)]
    pub compression: Compression,
    /// Encrypt the whole archive to these age recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Name of a Secret in the controller's namespace holding an API server
    /// EncryptionConfiguration (apiVersion apiserver.config.k8s.io/v1) under the key
    /// `encryption-provider-config.yaml`. Objects of the resources it lists (e.g. `secrets`)
    /// are encrypted inside the archive exactly as the API server encrypts them at rest, with
    /// its first provider (aescbc, aesgcm or secretbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_config_secret_name: Option<String>,
    /// What happens to the archive when this ResourceBackup is deleted: `Retain` (default)
    /// keeps it, `Delete` removes it from storage first and the object afterwards.
    #[serde(default)]
    pub retain_policy: RetainPolicy,
}

pub use crate::shared::RetainPolicy;

/// Where a ResourceBackup is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ResourceBackupPhase {
    /// Not started yet, or waiting to retry.
    #[default]
    Pending,
    /// Objects are streaming to storage.
    Running,
    /// The archive and its manifest are in storage.
    Succeeded,
    /// The backup failed; see the conditions and Events for why.
    Failed,
}

/// What the controller did, and what the archive holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceBackupStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default)]
    pub phase: ResourceBackupPhase,
    /// `Ready` is True once the archive is stored; its reason says why not otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The archive in storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactStatus>,
    /// Objects in the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_count: Option<u64>,
    /// Objects in the archive per kind, e.g. `Deployment.apps: 3`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kinds: BTreeMap<String, u64>,
    /// Objects encrypted with the EncryptionConfiguration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_objects: Option<u64>,
    /// The id of the backed-up cluster: the UID of its kube-system namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// How far the running backup got (updated every 10 seconds, and once at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ResourceBackupProgress>,
    /// When the backup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the backup succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// How far a running backup got.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceBackupProgress {
    /// Objects written to the archive so far.
    pub objects: u64,
    /// Archive bytes before compression and encryption so far.
    pub plaintext_bytes: u64,
    /// Bytes written to storage so far.
    pub stored_bytes: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_user_manifest_parses_with_defaults() {
        let yaml = r#"
resourceSetName: shop
storage: {name: minio}
encryptionConfigSecretName: shop-encryption
"#;
        let spec: ResourceBackupSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.storage.name, "minio");
        assert_eq!(spec.retain_policy, RetainPolicy::Retain);
        assert_eq!(spec.compression, Compression::default());
        assert!(spec.encryption.is_none());
    }
}
