//! What an etcd backup's manifests record beyond the artifact, so that a catalog can be rebuilt
//! from storage alone. It lives here, beside the manifest it extends, because both the writer
//! (etcd-backup-ctrl) and the readers (`stowctl etcd list|restore`) need it, and the CLI must not
//! depend on a controller.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The kind recorded in every manifest of an etcd backup.
pub const KIND: &str = "EtcdBackup";

/// The details of an etcd backup's manifest (`Manifest::details`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdDetails {
    /// `snapshot` or `certificates`.
    pub content: String,
    /// Name of the EtcdBackup that wrote it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub member_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etcd_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// On a snapshot: the key of the certificates' tar written with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_path: Option<String>,
    /// On a certificates' tar: the key of its snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_path: Option<String>,
}

/// `content` of a snapshot's manifest.
pub const SNAPSHOT: &str = "snapshot";
/// `content` of a certificates' tar's manifest.
pub const CERTIFICATES: &str = "certificates";

impl EtcdDetails {
    /// As the free-form details of a core manifest.
    pub fn to_map(&self) -> BTreeMap<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    }

    /// From the details of a core manifest; None when they are not an etcd backup's.
    pub fn from_map(details: &BTreeMap<String, serde_json::Value>) -> Option<EtcdDetails> {
        let value = serde_json::Value::Object(details.clone().into_iter().collect());
        serde_json::from_value::<EtcdDetails>(value)
            .ok()
            .filter(|d| !d.content.is_empty())
    }
}
