//! BackupStorage (cluster-scoped): where backups go, and who may use it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_core::StorageSpec;

/// An object storage location for backups: S3 (or S3-compatible), GCS, Azure Blob
/// Storage, or a directory on the controller's filesystem.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "BackupStorage",
    doc = "Where Stowage stores backups: an S3, GCS or Azure bucket, or a directory, with the namespaces allowed to use it.",
    plural = "backupstorages",
    shortname = "bst",
    category = "stowage",
    status = "BackupStorageStatus",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Prefix", type_ = "string", json_path = ".spec.prefix", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = section_for_type)]
pub struct BackupStorageSpec {
    /// The storage location.
    #[serde(flatten)]
    pub storage: StorageSpec,
    /// The Secret holding the credentials. Keys: `accessKeyId`, `secretAccessKey` and
    /// optionally `sessionToken` (S3); `serviceAccountJson` (GCS); `accountKey` or
    /// `sasToken` (Azure). Omit it to use the controller's ambient credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<NamespacedSecretRef>,
    /// Namespaces whose backups may use this storage. Empty means every namespace.
    /// Each namespace's artifacts live under its own prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
}

/// Each storage type reads its settings from its own section.
fn section_for_type(schema: &mut schemars::Schema) {
    let sections = [
        ("S3", "s3"),
        ("GCS", "gcs"),
        ("Azure", "azure"),
        ("Filesystem", "filesystem"),
    ];
    crate::schema::section_for_each_value(schema, "type", &sections);
}

/// A Secret in a given namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedSecretRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}

/// What the controller last found out about the storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorageStatus {
    /// `Ready` is True when a probe object could be written, read and deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl BackupStorageSpec {
    /// True when backups of objects in `namespace` may use this storage.
    pub fn allows(&self, namespace: &str) -> bool {
        self.allowed_namespaces.is_empty() || self.allowed_namespaces.iter().any(|n| n == namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_manifest_parses_into_the_core_storage_spec() {
        let yaml = r#"
type: S3
s3: {bucket: backups, endpoint: "http://minio:9000", forcePathStyle: true}
prefix: clusters/prod
credentialsSecretRef: {namespace: stowage-system, name: minio}
allowedNamespaces: [db]
"#;
        let spec: BackupStorageSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.storage.storage_type, stowage_core::StorageType::S3);
        assert_eq!(spec.storage.s3.as_ref().unwrap().bucket, "backups");
        assert_eq!(spec.storage.prefix, "clusters/prod");
        assert!(spec.allows("db") && !spec.allows("web"));
        assert!(BackupStorageSpec::default().allows("anything"));
    }
}
