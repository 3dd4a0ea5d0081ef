//! The archive's index (`stowage/index.json`): every object with its kind, namespace, name,
//! uid and owner uids, written last so that the archive streams.
//!
//! Until then the writer holds it, and a backup's memory must not grow with the cluster: the
//! entries are kept as compact JSON deflated as they come (about 230 bytes per object
//! shrink to a few dozen, mostly the random UIDs), and at the end inflated again straight
//! into the tar entry, chunk by chunk, never whole in memory.

use std::io::{Read, Write as _};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::archive::{EntryPath, io, owner_uids};
use crate::error::{Error, Result};
use crate::selector::ResourceType;

/// The archive format this code writes; readers refuse newer ones.
pub const FORMAT_VERSION: u32 = 1;

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

/// The archive's table of contents, as `stowage/index.json` holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub format_version: u32,
    /// UID of the backed-up cluster's kube-system namespace.
    #[serde(default)]
    pub cluster_id: String,
    pub entries: Vec<IndexEntry>,
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

/// The index being written: its entries as compact JSON, deflated as they come.
pub struct IndexBuffer {
    /// `entry,entry,…`, deflated.
    deflated: DeflateEncoder<Chunks>,
    /// One entry's JSON, reused: the encoder gets one write per entry.
    scratch: Vec<u8>,
    /// Length of the entries' JSON before deflating.
    json_bytes: u64,
    entries: u64,
}

impl Default for IndexBuffer {
    fn default() -> Self {
        IndexBuffer {
            // Fast: the JSON is repetitive, so even the fastest level shrinks it several-fold.
            deflated: DeflateEncoder::new(Chunks::default(), Compression::fast()),
            scratch: Vec::new(),
            json_bytes: 0,
            entries: 0,
        }
    }
}

impl IndexBuffer {
    /// Adds one entry.
    pub fn push(&mut self, entry: &IndexEntry) -> Result<()> {
        self.scratch.clear();
        if self.entries > 0 {
            self.scratch.push(b',');
        }
        serde_json::to_writer(&mut self.scratch, entry).map_err(|source| Error::Json {
            what: "serialising an index entry".into(),
            source,
        })?;
        self.deflated
            .write_all(&self.scratch)
            .map_err(|source| io("keeping the index", source))?;
        self.json_bytes += self.scratch.len() as u64;
        self.entries += 1;
        Ok(())
    }

    /// Deflated bytes held so far (what the index costs in memory).
    pub fn held_bytes(&self) -> usize {
        self.deflated.get_ref().held_bytes()
    }

    /// The index document, `{"formatVersion":…,"clusterId":…,"entries":[…]}` as [`Index`]
    /// serialises, as its length and a reader that inflates the entries as it is read.
    pub fn finish(self, cluster_id: &str) -> Result<(u64, impl Read)> {
        let deflated = self
            .deflated
            .finish()
            .map_err(|source| io("keeping the index", source))?;
        let head = serde_json::json!({"formatVersion": FORMAT_VERSION, "clusterId": cluster_id});
        let mut prefix = serde_json::to_vec(&head).map_err(|source| Error::Json {
            what: "serialising the index".into(),
            source,
        })?;
        prefix.pop(); // the closing brace
        prefix.extend_from_slice(b",\"entries\":[");
        let suffix: &[u8] = b"]}";
        let size = prefix.len() as u64 + self.json_bytes + suffix.len() as u64;
        let entries = DeflateDecoder::new(deflated.into_reader());
        Ok((size, std::io::Cursor::new(prefix).chain(entries).chain(suffix)))
    }
}

/// Bytes kept in fixed-size chunks. A `Vec` that grows by doubling holds up to twice what it
/// needs and, while it grows, the old and the new allocation at once (1.8 MiB of deflated
/// index at 50,000 objects would peak at 3.3 MiB plus a copy); chunks hold what is written,
/// allocated once each.
#[derive(Default)]
struct Chunks {
    full: Vec<Vec<u8>>,
    last: Vec<u8>,
}

/// Big enough that the chunk list stays short, small enough to waste little.
const CHUNK: usize = 64 << 10;

impl std::io::Write for Chunks {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.last.len() == CHUNK {
            self.full
                .push(std::mem::replace(&mut self.last, Vec::with_capacity(CHUNK)));
        } else if self.last.capacity() == 0 {
            self.last.reserve_exact(CHUNK);
        }
        let taken = bytes.len().min(CHUNK - self.last.len());
        self.last.extend_from_slice(&bytes[..taken]);
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Chunks {
    fn held_bytes(&self) -> usize {
        self.full.iter().chain([&self.last]).map(Vec::capacity).sum()
    }

    /// Reads the chunks in order, freeing each once read.
    fn into_reader(mut self) -> ChunkReader {
        self.full.push(self.last);
        ChunkReader {
            chunks: self.full.into_iter(),
            current: std::io::Cursor::new(Vec::new()),
        }
    }
}

struct ChunkReader {
    chunks: std::vec::IntoIter<Vec<u8>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let read = self.current.read(buf)?;
            if read > 0 || buf.is_empty() {
                return Ok(read);
            }
            match self.chunks.next() {
                Some(chunk) => self.current = std::io::Cursor::new(chunk),
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(i: usize) -> IndexEntry {
        IndexEntry {
            path: format!("core/v1/configmaps/shop/c{i}.json"),
            resource: ResourceType {
                group: String::new(),
                version: "v1".into(),
                kind: "ConfigMap".into(),
                plural: "configmaps".into(),
                namespaced: true,
            },
            namespace: Some("shop".into()),
            name: format!("c{i}"),
            uid: format!("{:08x}-{:04x}-4000-8000-{:012x}", i * 7919, i % 65536, i * 104_729),
            owner_uids: if i.is_multiple_of(3) {
                vec![format!("owner-{i}")]
            } else {
                vec![]
            },
            encrypted: i.is_multiple_of(2),
        }
    }

    #[test]
    fn the_index_reads_back_as_written_and_is_held_deflated() {
        let mut buffer = IndexBuffer::default();
        // Enough that the deflated entries span several chunks.
        let entries: Vec<IndexEntry> = (0..20_000).map(entry).collect();
        for entry in &entries {
            buffer.push(entry).unwrap();
        }
        let held = buffer.held_bytes();
        assert!(held > CHUNK, "{held} bytes held: the test should span chunks");
        let (size, mut reader) = buffer.finish("cluster-1").unwrap();
        let mut json = Vec::new();
        reader.read_to_end(&mut json).unwrap();
        assert_eq!(json.len() as u64, size);
        let index: Index = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            index,
            Index {
                format_version: FORMAT_VERSION,
                cluster_id: "cluster-1".into(),
                entries,
            }
        );
        assert!(
            held * 3 < json.len(),
            "{held} bytes held for {} bytes of JSON",
            json.len()
        );
    }

    #[test]
    fn an_empty_index_is_valid_json() {
        let (size, mut reader) = IndexBuffer::default().finish("c").unwrap();
        let mut json = String::new();
        reader.read_to_string(&mut json).unwrap();
        assert_eq!(size, json.len() as u64);
        let index: Index = serde_json::from_str(&json).unwrap();
        assert_eq!((index.cluster_id.as_str(), index.entries.len()), ("c", 0));
    }
}
