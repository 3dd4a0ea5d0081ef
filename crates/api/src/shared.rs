//! Spec and status types shared by several kinds.
//!
//! `///` comments are user documentation (`kubectl explain`); `//` comments are ours.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use stowage_core::{Algorithm, Artifact, Compression};

/// Where a backup's artifact goes: a BackupStorage and a path inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageRef {
    /// Name of the (cluster-scoped) BackupStorage.
    pub name: String,
    /// Path template inside the storage, relative to this object's own area
    /// (`<prefix>/<kind>/<namespace>/`). Go template syntax with Sprig's `date`, e.g.
    /// `{{ now | date "20060102-150405" | printf "/mysql/%s.sql.gz" }}`. Variables: `.Name`,
    /// `.Namespace`, `.Kind`, `.ScheduleName`. Default: `<name>/<UTC timestamp>.<ext>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A key of a Secret in the same namespace as the object that refers to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
}

/// Client-side encryption with age.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// Public keys to encrypt to: age recipients (`age1…`) or SSH public keys
    /// (`ssh-ed25519 …`, `ssh-rsa …`). Any one of the matching private keys decrypts.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Secret key holding a private key (age identity file or unencrypted OpenSSH key),
    /// used for automatic restores. Without it the backup is encrypted but not restorable
    /// by Stowage alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption_key: Option<SecretKeyRef>,
}

/// Schema of a free-form object whose fields the API server keeps; the controller parses
/// and validates it (used for Pod specs and for run specs of other kinds).
pub fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// What happens to a backup's data in storage when its object is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RetainPolicy {
    /// Keep the data in storage (the default).
    #[default]
    Retain,
    /// Delete the data from storage first, then the object.
    Delete,
}

/// The artifact of a backup, as shown in status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStatus {
    /// Name of the BackupStorage holding the artifact.
    pub storage: String,
    /// Stored size for people, e.g. "1.5 GiB".
    // No schema default: the 1.20 apiserver reads an empty-string default as null and
    // refuses the CRD, so an absent size is simply skipped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub size: String,
    /// The artifact itself.
    #[serde(flatten)]
    pub artifact: Artifact,
}

impl ArtifactStatus {
    /// The status record of an artifact in storage `storage`.
    pub fn new(storage: impl Into<String>, artifact: Artifact) -> Self {
        ArtifactStatus {
            storage: storage.into(),
            size: stowage_core::human_bytes(artifact.stored_bytes),
            artifact,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_status_flattens_the_core_record() {
        let status = ArtifactStatus::new(
            "minio",
            Artifact {
                stored_bytes: 1536,
                path: "a/b.gz".into(),
                ..Artifact::default()
            },
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["storage"], "minio");
        assert_eq!(json["size"], "1.5 KiB");
        assert_eq!(json["path"], "a/b.gz");
        assert_eq!(json["storedBytes"], 1536);
    }
}
