//! The archive: a plain tar that stock tools list and extract.
//!
//! ```text
//! <group or core>/<version>/<resource>/<namespace or _cluster>/<name>.json       one object
//! <group or core>/<version>/<resource>/<namespace or _cluster>/<name>.json.enc   encrypted (k8s:enc:… value)
//! stowage/resourceset.json                                                        the ResourceSet, for prune
//! stowage/index.json                                                              every entry: kind, namespace, name, uid, owner uids
//! ```
//!
//! The writer streams: each object becomes tar bytes that go straight to the output, and
//! only the index entries stay in memory until the end, as compact JSON in one buffer (a few
//! hundred bytes per object, and no small allocations left behind to fragment the heap). Reading is reader.rs: entry by
//! entry as the archive downloads.

use std::io::Read as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use stowage_api::resource_set::ResourceSetSpec;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::encryption::EncryptionConfig;
use crate::error::{Error, Result};
use crate::selector::ResourceType;

/// Where the ResourceSet is saved inside the archive.
pub const RESOURCE_SET_PATH: &str = "stowage/resourceset.json";
/// Where the index is saved inside the archive (last).
pub const INDEX_PATH: &str = "stowage/index.json";
/// The archive format this code writes; readers refuse newer ones.
pub const FORMAT_VERSION: u32 = 1;
/// The scope segment of cluster-scoped objects (namespace names have no `_`).
pub const CLUSTER_SCOPE: &str = "_cluster";

/// One object of the archive, as the index records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    /// Path of the object's file in the tar.
    pub path: String,
    /// The resource type, at the version the object was stored in.
    pub resource: ResourceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// The object's UID in the backed-up cluster.
    #[serde(default)]
    pub uid: String,
    /// UIDs of its owners (ownerReferences) in the backed-up cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_uids: Vec<String>,
    /// True when the file holds a `k8s:enc:` value rather than JSON.
    #[serde(default)]
    pub encrypted: bool,
}

/// The archive's table of contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub format_version: u32,
    /// UID of the backed-up cluster's kube-system namespace.
    #[serde(default)]
    pub cluster_id: String,
    pub entries: Vec<IndexEntry>,
}

/// What the writer put into the archive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub objects: u64,
    pub encrypted: u64,
    /// Objects per qualified kind (`Deployment.apps`).
    pub kinds: BTreeMap<String, u64>,
}

/// `<group or core>/<version>/<resource>/<namespace or _cluster>/<name>.json[.enc]`.
pub fn entry_path(resource: &ResourceType, namespace: Option<&str>, name: &str, encrypted: bool) -> String {
    let group = if resource.group.is_empty() {
        "core"
    } else {
        &resource.group
    };
    let scope = namespace.unwrap_or(CLUSTER_SCOPE);
    let ext = if encrypted { "json.enc" } else { "json" };
    format!("{group}/{}/{}/{scope}/{name}.{ext}", resource.version, resource.plural)
}

/// Removes what the API server fills in and a restore must not send back. Keeps `uid` and
/// `ownerReferences` (a restore re-links owners by them) and `status`.
pub fn strip_server_fields(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "resourceVersion",
            "managedFields",
            "selfLink",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            metadata.remove(field);
        }
    }
}

/// The UIDs an object's ownerReferences point at.
pub fn owner_uids(object: &Value) -> Vec<String> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|owners| {
            owners
                .iter()
                .filter_map(|o| o["uid"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Streams objects as tar entries into `out`.
pub struct ArchiveWriter<W> {
    out: W,
    tar: tar::Builder<Vec<u8>>,
    /// The index's entries so far: JSON objects separated by commas.
    entries: Vec<u8>,
    summary: Summary,
    encryption: Option<EncryptionConfig>,
}

impl<W: AsyncWrite + Unpin> ArchiveWriter<W> {
    /// A writer into `out`, encrypting objects of the resources `encryption` lists.
    pub fn new(out: W, encryption: Option<EncryptionConfig>) -> Self {
        ArchiveWriter {
            out,
            tar: tar::Builder::new(Vec::new()),
            entries: Vec::new(),
            summary: Summary::default(),
            encryption,
        }
    }

    /// Adds one object (already stripped) of type `resource`.
    pub async fn add(&mut self, resource: &ResourceType, object: &Value) -> Result<()> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let namespace = object["metadata"]["namespace"].as_str().map(String::from);
        let json = serde_json::to_vec(object).map_err(|source| Error::Json {
            what: format!("serialising {} {name}", resource.kind),
            source,
        })?;
        let plain_path = entry_path(resource, namespace.as_deref(), &name, false);
        let encrypted_path = entry_path(resource, namespace.as_deref(), &name, true);
        let sealed = self
            .encryption
            .as_ref()
            .and_then(|config| config.seal(&resource.group, &resource.plural, encrypted_path.as_bytes(), &json));
        let (path, data, encrypted) = match sealed {
            Some(sealed) => (encrypted_path, sealed, true),
            None => (plain_path, json, false),
        };
        self.append(&path, &data).await?;
        self.summary.objects += 1;
        self.summary.encrypted += u64::from(encrypted);
        *self.summary.kinds.entry(resource.qualified_kind()).or_default() += 1;
        let entry = IndexEntry {
            path,
            resource: resource.clone(),
            namespace,
            name,
            uid: object["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
            owner_uids: owner_uids(object),
            encrypted,
        };
        if !self.entries.is_empty() {
            self.entries.push(b',');
        }
        serde_json::to_writer(&mut self.entries, &entry).map_err(|source| Error::Json {
            what: "serialising an index entry".into(),
            source,
        })?;
        Ok(())
    }

    /// Writes the ResourceSet and the index, ends the tar and shuts `out` down.
    pub async fn finish(mut self, resource_set: &ResourceSetSpec, cluster_id: &str) -> Result<Summary> {
        let json = |what: &str, value: &dyn erased::Json| {
            value.to_vec().map_err(|source| Error::Json {
                what: what.into(),
                source,
            })
        };
        let set = json("serialising the ResourceSet", resource_set)?;
        self.append(RESOURCE_SET_PATH, &set).await?;
        // The index as `Index` serialises, its entries spliced in without another copy.
        let head = serde_json::json!({"formatVersion": FORMAT_VERSION, "clusterId": cluster_id});
        let mut prefix = serde_json::to_vec(&head).map_err(|source| Error::Json {
            what: "serialising the index".into(),
            source,
        })?;
        prefix.pop(); // the closing brace
        prefix.extend_from_slice(b",\"entries\":[");
        let entries = std::mem::take(&mut self.entries);
        let suffix: &[u8] = b"]}";
        let size = prefix.len() + entries.len() + suffix.len();
        self.append_reader(
            INDEX_PATH,
            size as u64,
            prefix.as_slice().chain(entries.as_slice()).chain(suffix),
        )
        .await?;
        let trailer = self.tar.into_inner().map_err(|source| io("ending the tar", source))?;
        self.out
            .write_all(&trailer)
            .await
            .map_err(|source| io("writing the archive", source))?;
        self.out
            .shutdown()
            .await
            .map_err(|source| io("writing the archive", source))?;
        Ok(self.summary)
    }

    async fn append(&mut self, path: &str, data: &[u8]) -> Result<()> {
        self.append_reader(path, data.len() as u64, data).await
    }

    async fn append_reader(&mut self, path: &str, size: u64, data: impl std::io::Read) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Long paths (up to 253-character names) get GNU long-name entries from the builder.
        self.tar
            .append_data(&mut header, path, data)
            .map_err(|source| io(&format!("adding {path} to the tar"), source))?;
        let bytes = std::mem::take(self.tar.get_mut());
        self.out
            .write_all(&bytes)
            .await
            .map_err(|source| io("writing the archive", source))
    }
}

// serde_json::to_vec over two different types without generics in a closure.
mod erased {
    pub trait Json {
        fn to_vec(&self) -> Result<Vec<u8>, serde_json::Error>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_vec(&self) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec_pretty(self)
        }
    }
}

fn io(what: &str, source: std::io::Error) -> Error {
    Error::Io {
        what: what.to_string(),
        source,
    }
}

/// An object file's path, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPath {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: String,
    pub encrypted: bool,
}

/// Takes `<group or core>/<version>/<resource>/<namespace or _cluster>/<name>.json[.enc]` apart.
pub fn parse_path(path: &str) -> Option<EntryPath> {
    let mut parts = path.splitn(5, '/');
    let (group, version, plural, scope, file) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let (name, encrypted) = match file.strip_suffix(".json.enc") {
        Some(name) => (name, true),
        None => (file.strip_suffix(".json")?, false),
    };
    if name.is_empty() || name.contains('/') {
        return None;
    }
    Some(EntryPath {
        group: if group == "core" {
            String::new()
        } else {
            group.to_string()
        },
        version: version.to_string(),
        plural: plural.to_string(),
        namespace: (scope != CLUSTER_SCOPE).then(|| scope.to_string()),
        name: name.to_string(),
        encrypted,
    })
}

impl IndexEntry {
    /// The index entry of an object read from the archive at `path`.
    pub fn new(path: String, parts: EntryPath, kind: String, object: &Value) -> IndexEntry {
        IndexEntry {
            path,
            resource: ResourceType {
                group: parts.group,
                version: parts.version,
                kind,
                plural: parts.plural,
                namespaced: parts.namespace.is_some(),
            },
            namespace: parts.namespace,
            name: parts.name,
            uid: object["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
            owner_uids: owner_uids(object),
            encrypted: parts.encrypted,
        }
    }
}

/// `Deployment.apps shop/web`: how errors and status name an object.
pub fn describe(entry: &IndexEntry) -> String {
    match &entry.namespace {
        Some(namespace) => format!("{} {namespace}/{}", entry.resource.qualified_kind(), entry.name),
        None => format!("{} {}", entry.resource.qualified_kind(), entry.name),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn configmaps() -> ResourceType {
        ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            namespaced: true,
        }
    }

    fn secrets() -> ResourceType {
        ResourceType {
            kind: "Secret".into(),
            plural: "secrets".into(),
            ..configmaps()
        }
    }

    #[test]
    fn paths_follow_the_layout() {
        let roles = ResourceType {
            group: "rbac.authorization.k8s.io".into(),
            version: "v1".into(),
            kind: "ClusterRole".into(),
            plural: "clusterroles".into(),
            namespaced: false,
        };
        assert_eq!(
            entry_path(&configmaps(), Some("shop"), "a", false),
            "core/v1/configmaps/shop/a.json"
        );
        assert_eq!(
            entry_path(&roles, None, "system:x", true),
            "rbac.authorization.k8s.io/v1/clusterroles/_cluster/system:x.json.enc"
        );
    }

    #[test]
    fn server_fields_go_uid_owners_and_status_stay() {
        let mut object = json!({"metadata": {"name": "a", "uid": "u1", "resourceVersion": "5", "generation": 2,
            "creationTimestamp": "2020-01-01T00:00:00Z", "managedFields": [], "selfLink": "/x",
            "ownerReferences": [{"uid": "o1"}, {"uid": "o2"}]}, "status": {"ready": true}});
        strip_server_fields(&mut object);
        assert_eq!(
            object,
            json!({"metadata": {"name": "a", "uid": "u1", "ownerReferences": [{"uid": "o1"}, {"uid": "o2"}]}, "status": {"ready": true}})
        );
        assert_eq!(owner_uids(&object), ["o1", "o2"]);
    }

    #[tokio::test]
    async fn written_archives_read_back_with_long_names_and_encryption() {
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let config = EncryptionConfig::parse(
            "test",
            &format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: [{{aescbc: {{keys: [{{name: k1, secret: '{key}'}}]}}}}]"),
        )
        .unwrap();
        let long_name = "n".repeat(253);
        let (write_half, read_half) = tokio::io::duplex(4096);
        let mut writer = ArchiveWriter::new(write_half, Some(config.clone()));
        let write = async {
            writer
                .add(
                    &configmaps(),
                    &json!({"metadata": {"name": long_name, "namespace": "shop", "uid": "c1"}, "data": {"k": "v"}}),
                )
                .await?;
            writer
                .add(&secrets(), &json!({"metadata": {"name": "db", "namespace": "shop", "uid": "s1", "ownerReferences": [{"uid": "c1"}]}, "data": {"password": "aHVudGVyMg=="}}))
                .await?;
            writer.finish(&ResourceSetSpec::default(), "cluster-1").await
        };
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(object_store::memory::InMemory::new());
        let request = stowage_core::BackupRequest::new(store.clone(), "a.tar.gz", "ResourceBackup", "test");
        let (summary, stored) = tokio::join!(write, stowage_core::backup(request, read_half));
        let summary = summary.unwrap();
        stored.unwrap();
        assert_eq!((summary.objects, summary.encrypted), (2, 1));
        assert_eq!(summary.kinds["Secret"], 1);

        // Read back entry by entry as it downloads.
        let source = crate::reader::Source::new(store, "a.tar.gz", stowage_core::Identities::none());
        let mut stream = crate::reader::ArchiveStream::open(&source, stowage_core::Progress::default());
        let mut objects = Vec::new();
        let mut head = None;
        while let Some(item) = stream.next().await {
            match item {
                crate::reader::Item::Object { position, path, data } => objects.push((position, path, data)),
                crate::reader::Item::Index(index) => head = Some(index),
                crate::reader::Item::ResourceSet(_) => {}
            }
        }
        stream.finish().await.unwrap();
        let head = head.unwrap();
        assert_eq!(
            (head.format_version, head.cluster_id.as_str(), head.entries),
            (FORMAT_VERSION, "cluster-1", 2)
        );
        assert_eq!(objects.len(), 2);
        let (position, path, data) = &objects[0];
        assert_eq!(*position, 0);
        let parts = parse_path(path).unwrap();
        assert_eq!(
            (parts.name.as_str(), parts.namespace.as_deref(), parts.encrypted),
            (long_name.as_str(), Some("shop"), false)
        );
        let object: Value = serde_json::from_slice(data).unwrap();
        assert_eq!(object["metadata"]["name"], long_name.as_str());
        let (position, path, data) = &objects[1];
        assert_eq!((*position, path.as_str()), (1, "core/v1/secrets/shop/db.json.enc"));
        let plain = config.open("Secret shop/db", path.as_bytes(), data).unwrap();
        let object: Value = serde_json::from_slice(&plain).unwrap();
        let entry = IndexEntry::new(path.clone(), parse_path(path).unwrap(), "Secret".into(), &object);
        assert_eq!(entry.owner_uids, ["c1"]);
        assert!(entry.encrypted && entry.resource.plural == "secrets" && entry.resource.group.is_empty());
        assert_eq!(object["data"]["password"], "aHVudGVyMg==");
    }

    #[test]
    fn paths_parse_back() {
        assert_eq!(parse_path("stowage/index.json"), None);
        let parts = parse_path("rbac.authorization.k8s.io/v1/clusterroles/_cluster/system:x.json.enc").unwrap();
        assert_eq!(
            (
                parts.group.as_str(),
                parts.plural.as_str(),
                parts.namespace,
                parts.name.as_str(),
                parts.encrypted
            ),
            ("rbac.authorization.k8s.io", "clusterroles", None, "system:x", true)
        );
        let parts = parse_path("core/v1/configmaps/shop/a.json.json").unwrap();
        assert_eq!(
            (parts.group.as_str(), parts.name.as_str(), parts.namespace.as_deref()),
            ("", "a.json", Some("shop"))
        );
    }
}
