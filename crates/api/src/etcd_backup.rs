//! EtcdBackup (cluster-scoped): one snapshot of an etcd cluster, and optionally the control
//! plane's certificate directory, streamed to a BackupStorage. Each succeeded EtcdBackup is a
//! catalog record; the manifest in storage carries the same details.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backup_storage::NamespacedSecretRef;
use crate::shared::{ArtifactStatus, Compression, Encryption, StorageRef};

/// The endpoint used when `endpoints` is empty: the local etcd member of a kubeadm control plane.
pub const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:2379";

/// A snapshot of an etcd cluster (and optionally the control plane's certificates) streamed to
/// a BackupStorage.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "EtcdBackup",
    doc = "A snapshot of an etcd cluster, and optionally the control plane's certificate directory, streamed to a BackupStorage. Restore it with `stowctl etcd restore`.",
    plural = "etcdbackups",
    shortname = "etcdb",
    category = "stowage",
    status = "EtcdBackupStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.artifact.size"),
    printcolumn(name = "Storage", type_ = "string", json_path = ".spec.storage.name"),
    printcolumn(name = "Path", type_ = "string", json_path = ".status.artifact.path", priority = "1"),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.etcdVersion",
        priority = "1"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupSpec {
    /// etcd client URLs, e.g. `https://10.0.0.1:2379`. The healthy member with the highest
    /// revision is snapshotted. Default: `https://127.0.0.1:2379` (the local member, for a
    /// controller running with the host network on a control-plane node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// The Secret holding etcd's TLS client credentials, with keys `ca.crt`, `client.crt` and
    /// `client.key` (on kubeadm clusters: /etc/kubernetes/pki/etcd/ca.crt,
    /// apiserver-etcd-client.crt and apiserver-etcd-client.key). Omit it for plain http endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<NamespacedSecretRef>,
    /// A directory on the controller's host to archive as a tar next to the snapshot, e.g.
    /// `/etc/kubernetes/pki`. It must be mounted into the controller (the deployment mounts
    /// /etc/kubernetes/pki read-only). Omit it to back up the snapshot only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<String>,
    /// Where the snapshot goes. The certificates' tar goes next to it, with `-certs` added
    /// to its name.
    pub storage: StorageRef,
    /// How the snapshot is compressed. Default: gzip level 6.
    #[serde(default)]
    pub compression: Compression,
    /// Encrypt the snapshot (and the certificates, which include private keys) to these
    /// recipients. Strongly recommended: an etcd snapshot holds every Secret of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// What happens to the data in storage when this EtcdBackup is deleted: `Retain` (default)
    /// keeps it, `Delete` removes it first and the object afterwards.
    #[serde(default)]
    pub retain_policy: RetainPolicy,
}

pub use crate::shared::RetainPolicy;

/// Where an EtcdBackup is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EtcdBackupPhase {
    /// Not started yet, or waiting to retry.
    #[default]
    Pending,
    /// The snapshot is streaming to storage.
    Running,
    /// The snapshot (and certificates) are in storage with their manifests.
    Succeeded,
    /// The backup failed; see the conditions and Events for why.
    Failed,
}

/// What the controller did, and what the snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default)]
    pub phase: EtcdBackupPhase,
    /// `Ready` is True once the snapshot is stored; its reason says why not otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The snapshot in storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactStatus>,
    /// The tar of `certsDir` in storage, when it was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_artifact: Option<ArtifactStatus>,
    /// The etcd revision when the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The etcd cluster id, hex (as `etcdctl endpoint status` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The id of the member that was snapshotted, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// The client URL of the member that was snapshotted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The etcd server version of that member, e.g. `3.5.16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// Bytes streamed so far by the running backup (updated every 10 seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<EtcdBackupProgress>,
    /// Failed attempts so far. Transient failures (etcd or storage unreachable, a missing
    /// Secret) are retried with growing delays; after 5 the backup fails for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
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
pub struct EtcdBackupProgress {
    /// Snapshot bytes read from etcd.
    pub plaintext_bytes: u64,
    /// Bytes written to storage (compressed and encrypted).
    pub stored_bytes: u64,
}

impl EtcdBackupSpec {
    /// The endpoints in effect (the default when none are given).
    pub fn effective_endpoints(&self) -> Vec<String> {
        if self.endpoints.is_empty() {
            vec![DEFAULT_ENDPOINT.to_string()]
        } else {
            self.endpoints.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_manifest_parses_with_defaults() {
        let yaml = r#"
credentialsSecretRef: {namespace: stowage-system, name: etcd-client}
certsDir: /etc/kubernetes/pki
storage: {name: minio}
encryption: {recipients: ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]}
"#;
        let spec: EtcdBackupSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.effective_endpoints(), vec![DEFAULT_ENDPOINT.to_string()]);
        assert_eq!(spec.retain_policy, RetainPolicy::Retain);
        assert_eq!(spec.compression, Compression::default());
        assert_eq!(spec.certs_dir.as_deref(), Some("/etc/kubernetes/pki"));
        assert_eq!(spec.credentials_secret_ref.unwrap().name, "etcd-client");
    }

    #[test]
    fn status_serialises_in_camel_case() {
        let status = EtcdBackupStatus {
            phase: EtcdBackupPhase::Succeeded,
            revision: Some(42),
            cluster_id: Some("cdf818194e3a8c32".into()),
            etcd_version: Some("3.4.23".into()),
            ..EtcdBackupStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "Succeeded");
        assert_eq!(json["revision"], 42);
        assert_eq!(json["clusterId"], "cdf818194e3a8c32");
        assert_eq!(json["etcdVersion"], "3.4.23");
        assert!(json.get("artifact").is_none());
    }
}
