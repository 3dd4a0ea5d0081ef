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
//! only the index waits for the end, deflated, in memory or in segments in the backup's
//! storage (index.rs). Reading is reader.rs: entry by entry as the archive downloads.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use serde_json::Value;
use stowage_api::resource_set::ResourceSetSpec;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::encryption::EncryptionConfig;
use crate::error::{Error, Result};
use crate::index::{IndexBuffer, IndexEntry, IndexReader};
use crate::segments::Segments;
use crate::selector::ResourceType;

/// Where the ResourceSet is saved inside the archive.
pub const RESOURCE_SET_PATH: &str = "stowage/resourceset.json";
/// Where the index is saved inside the archive (last).
pub const INDEX_PATH: &str = "stowage/index.json";
/// The scope segment of cluster-scoped objects (namespace names have no `_`).
pub const CLUSTER_SCOPE: &str = "_cluster";
/// Tar's block size: headers are one block, data is padded to whole blocks.
const BLOCK: usize = 512;
/// How much of the index is inflated at a time while it is written.
const INDEX_CHUNK: usize = 64 * 1024;

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

/// [`strip_server_fields`] for a listed object's typed metadata (the same fields).
pub fn strip_server_metadata(metadata: &mut ObjectMeta) {
    metadata.resource_version = None;
    metadata.managed_fields = None;
    metadata.self_link = None;
    metadata.creation_timestamp = None;
    metadata.generation = None;
    metadata.deletion_timestamp = None;
    metadata.deletion_grace_period_seconds = None;
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
    index: IndexBuffer,
    summary: Summary,
    encryption: Option<EncryptionConfig>,
}

impl<W: AsyncWrite + Unpin> ArchiveWriter<W> {
    /// A writer into `out`, encrypting objects of the resources `encryption` lists.
    pub fn new(out: W, encryption: Option<EncryptionConfig>) -> Self {
        ArchiveWriter {
            out,
            tar: tar::Builder::new(Vec::new()),
            index: IndexBuffer::default(),
            summary: Summary::default(),
            encryption,
        }
    }

    /// Stores the index in `segments` as it grows instead of holding all of it until the end.
    pub fn spill_index_to(mut self, segments: Segments) -> Self {
        self.index = IndexBuffer::spilling_to(segments);
        self
    }

    /// Adds one object of type `resource`, already stripped ([`strip_server_metadata`]) and
    /// with its apiVersion and kind set. It is serialised as it is: no copy as a `Value`.
    pub async fn add(&mut self, resource: &ResourceType, object: &DynamicObject) -> Result<()> {
        let metadata = &object.metadata;
        let name = metadata.name.clone().unwrap_or_default();
        let namespace = metadata.namespace.clone();
        let json = serde_json::to_vec(object).map_err(|source| Error::Json {
            what: format!("serialising {} {name}", resource.kind),
            source,
        })?;
        let encrypted_path = entry_path(resource, namespace.as_deref(), &name, true);
        let sealed = self
            .encryption
            .as_ref()
            .and_then(|config| config.seal(&resource.group, &resource.plural, encrypted_path.as_bytes(), &json));
        let (path, data, encrypted) = match sealed {
            Some(sealed) => (encrypted_path, sealed, true),
            None => (entry_path(resource, namespace.as_deref(), &name, false), json, false),
        };
        self.append(&path, &data).await?;
        self.summary.objects += 1;
        self.summary.encrypted += u64::from(encrypted);
        *self.summary.kinds.entry(resource.qualified_kind()).or_default() += 1;
        self.index
            .push(&IndexEntry {
                path,
                resource: resource.clone(),
                namespace,
                name,
                uid: metadata.uid.clone().unwrap_or_default(),
                owner_uids: metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .map(|owner| owner.uid.clone())
                    .collect(),
                encrypted,
            })
            .await
    }

    /// Writes the ResourceSet and the index, ends the tar and shuts `out` down.
    pub async fn finish(mut self, resource_set: &ResourceSetSpec, cluster_id: &str) -> Result<Summary> {
        let set = serde_json::to_vec_pretty(resource_set).map_err(|source| Error::Json {
            what: "serialising the ResourceSet".into(),
            source,
        })?;
        self.append(RESOURCE_SET_PATH, &set).await?;
        let ArchiveWriter {
            mut out,
            tar,
            index,
            summary,
            ..
        } = self;
        let (size, entries) = index.finish(cluster_id)?;
        append_streamed(&mut out, INDEX_PATH, size, entries).await?;
        let trailer = tar.into_inner().map_err(|source| io("ending the tar", source))?;
        write(&mut out, &trailer).await?;
        out.shutdown()
            .await
            .map_err(|source| io("writing the archive", source))?;
        Ok(summary)
    }

    /// Appends a small file through the tar builder (which handles long names).
    async fn append(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let mut header = file_header(data.len() as u64);
        // Long paths (up to 253-character names) get GNU long-name entries from the builder.
        self.tar
            .append_data(&mut header, path, data)
            .map_err(|source| io(&format!("adding {path} to the tar"), source))?;
        // The builder's buffer is reused: one allocation for the whole archive, not per object.
        let bytes = self.tar.get_mut();
        write(&mut self.out, bytes).await?;
        bytes.clear();
        Ok(())
    }
}

/// Appends a large file (short `path`) of `size` bytes to the tar in `out` chunk by chunk,
/// never whole in memory: the tar builder would first copy all of it into its buffer.
async fn append_streamed<W: AsyncWrite + Unpin>(
    out: &mut W,
    path: &str,
    size: u64,
    mut data: IndexReader,
) -> Result<()> {
    let what = |source| io(&format!("adding {path} to the tar"), source);
    let mut header = file_header(size);
    header.set_path(path).map_err(what)?;
    header.set_cksum();
    write(out, header.as_bytes()).await?;
    let mut chunk = vec![0; INDEX_CHUNK];
    let mut written = 0u64;
    loop {
        let read = data.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        written += read as u64;
        write(out, &chunk[..read]).await?;
    }
    if written != size {
        return Err(what(std::io::Error::other(format!(
            "{written} bytes where the header says {size}"
        ))));
    }
    let padding = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
    write(out, &[0; BLOCK][..padding]).await
}

async fn write<W: AsyncWrite + Unpin>(out: &mut W, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes)
        .await
        .map_err(|source| io("writing the archive", source))
}

/// A regular file's header, as every entry of the archive has it.
fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

pub(crate) fn io(what: &str, source: std::io::Error) -> Error {
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

    fn owner(uid: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "name": uid, "uid": uid})
    }

    #[test]
    fn server_fields_go_uid_owners_and_status_stay() {
        let original = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "uid": "u1",
            "resourceVersion": "5", "generation": 2, "creationTimestamp": "2020-01-01T00:00:00Z",
            "deletionTimestamp": "2020-01-02T00:00:00Z", "deletionGracePeriodSeconds": 30,
            "managedFields": [{"manager": "m"}], "selfLink": "/x",
            "ownerReferences": [owner("o1"), owner("o2")]}, "status": {"ready": true}});
        let stripped = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "uid": "u1",
            "ownerReferences": [owner("o1"), owner("o2")]}, "status": {"ready": true}});
        let mut object = original.clone();
        strip_server_fields(&mut object);
        assert_eq!(object, stripped);
        assert_eq!(owner_uids(&object), ["o1", "o2"]);
        // The typed way the backup takes strips the same fields.
        let mut listed: DynamicObject = serde_json::from_value(original).unwrap();
        strip_server_metadata(&mut listed.metadata);
        assert_eq!(serde_json::to_value(&listed).unwrap(), stripped);
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
        let object = |value: Value| serde_json::from_value::<DynamicObject>(value).unwrap();
        let config_map = object(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": long_name, "namespace": "shop", "uid": "c1"}, "data": {"k": "v"}}),
        );
        let secret = object(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop", "uid": "s1", "ownerReferences": [owner("c1")]}, "data": {"password": "aHVudGVyMg=="}}),
        );
        let write = async {
            writer.add(&configmaps(), &config_map).await?;
            writer.add(&secrets(), &secret).await?;
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
            (crate::index::FORMAT_VERSION, "cluster-1", 2)
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
        assert_eq!(
            (object["apiVersion"].as_str(), object["kind"].as_str()),
            (Some("v1"), Some("ConfigMap"))
        );
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
