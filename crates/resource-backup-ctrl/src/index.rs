//! The archive's index (`stowage/index.json`): every object with its kind, namespace, name,
//! uid and owner uids, written last so that the archive streams.
//!
//! Until then the writer keeps it, and a backup's memory must not grow with the cluster: the
//! entries are kept as compact JSON deflated as they come (about 230 bytes per object
//! shrink to a few dozen, mostly the random UIDs), in segments. A backup stores each full
//! segment in its storage (segments.rs) and holds only the one being written; at the end the
//! segments are read back in order and inflated straight into the tar entry, chunk by chunk,
//! never whole in memory. An index smaller than one segment never leaves memory.

use std::io::{Cursor, Read, Write as _};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::archive::{EntryPath, io, owner_uids};
use crate::error::{Error, Result};
use crate::segments::Segments;
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

/// The index being written: its entries as compact JSON, deflated as they come, one segment
/// at a time. Each segment is a deflate stream of its own, and the JSON runs on across them.
pub struct IndexBuffer {
    /// The segment being written: `entry,entry,…`, deflated.
    deflated: DeflateEncoder<Chunks>,
    /// One entry's JSON, reused: the encoder gets one write per entry.
    scratch: Vec<u8>,
    /// Length of the entries' JSON before deflating (the tar header needs the total).
    json_bytes: u64,
    /// JSON in the segment being written.
    segment_json: usize,
    entries: u64,
    /// Where full segments go; without, the whole index is held (small archives, tests).
    segments: Option<Segments>,
}

impl Default for IndexBuffer {
    fn default() -> Self {
        IndexBuffer {
            // Fast: the JSON is repetitive, so even the fastest level shrinks it several-fold.
            deflated: DeflateEncoder::new(Chunks::default(), Compression::fast()),
            scratch: Vec::new(),
            json_bytes: 0,
            segment_json: 0,
            entries: 0,
            segments: None,
        }
    }
}

impl IndexBuffer {
    /// An index that stores each full segment in `segments`.
    pub fn spilling_to(segments: Segments) -> IndexBuffer {
        IndexBuffer {
            segments: Some(segments),
            ..IndexBuffer::default()
        }
    }

    /// Adds one entry; stores the segment when it is full.
    pub async fn push(&mut self, entry: &IndexEntry) -> Result<()> {
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
        self.segment_json += self.scratch.len();
        self.entries += 1;
        if let Some(segments) = &self.segments
            && self.segment_json >= segments.json_bytes()
        {
            // Ends this segment's deflate stream; the encoder's state is kept for the next.
            let full = self
                .deflated
                .reset(Chunks::default())
                .map_err(|source| io("keeping the index", source))?;
            self.segment_json = 0;
            segments.put(full.into_payload()).await?;
        }
        Ok(())
    }

    /// Deflated bytes held so far (what the index costs in memory).
    pub fn held_bytes(&self) -> usize {
        self.deflated.get_ref().held_bytes()
    }

    /// The index document, `{"formatVersion":…,"clusterId":…,"entries":[…]}` as [`Index`]
    /// serialises, as its length and a reader that inflates the entries as it is read.
    pub fn finish(self, cluster_id: &str) -> Result<(u64, IndexReader)> {
        let held = self
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
        let size = prefix.len() as u64 + self.json_bytes + SUFFIX.len() as u64;
        let stored = self.segments.as_ref().map_or(0, Segments::count);
        let reader = IndexReader {
            current: Box::new(Cursor::new(prefix)),
            segments: self.segments,
            stored: 1..=stored,
            held: Some(held),
            suffix: Some(SUFFIX),
        };
        Ok((size, reader))
    }
}

/// What closes the index document.
const SUFFIX: &[u8] = b"]}";

/// The index document read back in order: the head, each stored segment (fetched when it is
/// reached), the segment held, the closing brackets.
pub struct IndexReader {
    /// What is being read now.
    current: Box<dyn Read + Send>,
    segments: Option<Segments>,
    /// Numbers of the stored segments not read yet.
    stored: std::ops::RangeInclusive<u32>,
    held: Option<Chunks>,
    suffix: Option<&'static [u8]>,
}

impl IndexReader {
    /// Reads the next bytes of the document into `buf`; 0 at its end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            let read = self
                .current
                .read(buf)
                .map_err(|source| io("reading the index back", source))?;
            if read > 0 || buf.is_empty() {
                return Ok(read);
            }
            self.current = if let (Some(segments), Some(number)) = (&self.segments, self.stored.next()) {
                Box::new(DeflateDecoder::new(Cursor::new(segments.get(number).await?)))
            } else if let Some(held) = self.held.take() {
                Box::new(DeflateDecoder::new(held.into_reader()))
            } else if let Some(suffix) = self.suffix.take() {
                Box::new(suffix)
            } else {
                return Ok(0);
            };
        }
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

    /// The chunks as an upload's payload, uncopied.
    fn into_payload(mut self) -> PutPayload {
        self.full.push(self.last);
        self.full.into_iter().map(bytes::Bytes::from).collect()
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

    /// Everything `reader` reads, in small pieces.
    async fn read_all(mut reader: IndexReader) -> Vec<u8> {
        let (mut json, mut piece) = (Vec::new(), [0; 1000]);
        loop {
            match reader.read(&mut piece).await.unwrap() {
                0 => return json,
                read => json.extend_from_slice(&piece[..read]),
            }
        }
    }

    #[tokio::test]
    async fn the_index_reads_back_as_written_and_is_held_deflated() {
        let mut buffer = IndexBuffer::default();
        // Enough that the deflated entries span several chunks.
        let entries: Vec<IndexEntry> = (0..20_000).map(entry).collect();
        for entry in &entries {
            buffer.push(entry).await.unwrap();
        }
        let held = buffer.held_bytes();
        assert!(held > CHUNK, "{held} bytes held: the test should span chunks");
        let (size, reader) = buffer.finish("cluster-1").unwrap();
        let json = read_all(reader).await;
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

    #[tokio::test]
    async fn a_spilled_index_reads_back_the_same_and_holds_one_segment() {
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(object_store::memory::InMemory::new());
        let segments = Segments::new(store.clone(), "a/b.tar.gz").with_json_bytes(64 << 10);
        let (mut held, mut spilled) = (IndexBuffer::default(), IndexBuffer::spilling_to(segments.clone()));
        let mut most_held = 0;
        for entry in (0..20_000).map(entry) {
            held.push(&entry).await.unwrap();
            spilled.push(&entry).await.unwrap();
            most_held = most_held.max(spilled.held_bytes());
        }
        // About 5 MB of JSON: 76 segments of 64 KiB, of which one is held at a time.
        assert_eq!(segments.count(), 76);
        assert!(
            most_held <= CHUNK && held.held_bytes() >= 8 * most_held,
            "{most_held} bytes held at most, where the whole index takes {}",
            held.held_bytes()
        );
        let keys: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(None))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.location.to_string())
            .collect();
        assert_eq!(keys.len(), 76);
        assert_eq!(keys[0], "a/b.tar.gz.scratch/00001");
        assert!(keys.iter().all(|key| stowage_core::Layout::is_scratch_key(key)));

        let (size, reader) = held.finish("c").unwrap();
        let whole = read_all(reader).await;
        let (spilled_size, reader) = spilled.finish("c").unwrap();
        assert_eq!(spilled_size, size);
        assert!(read_all(reader).await == whole, "the same document, byte for byte");
        segments.delete().await.unwrap();
        let left = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(None))
            .await
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn an_empty_index_is_valid_json() {
        let (size, reader) = IndexBuffer::default().finish("c").unwrap();
        let json = read_all(reader).await;
        assert_eq!(size, json.len() as u64);
        let index: Index = serde_json::from_slice(&json).unwrap();
        assert_eq!((index.cluster_id.as_str(), index.entries.len()), ("c", 0));
    }
}
