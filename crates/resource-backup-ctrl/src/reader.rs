//! Reading an archive as it downloads: stowage-core restores (and verifies) the payload into a
//! pipe, a blocking task parses the tar from the pipe entry by entry, and the caller receives
//! the entries one at a time through a small bounded channel. Memory holds a few entries and
//! the pipe's buffer, whatever the archive's size. A restore reads an archive more than once
//! (see restore.rs), so a [`Source`] says where it is and [`ArchiveStream::open`] starts one pass.

use std::io::Read as _;
use std::sync::Arc;

use serde::Deserialize;
use stowage_core::{Identities, Progress, RestoreRequest};
use stowage_operator::cancel::CancellableRead;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::archive::{INDEX_PATH, RESOURCE_SET_PATH};
use crate::error::{Error, Result};

/// Buffer between the data path and the tar parser.
const PIPE_BYTES: usize = 1 << 20;
/// Entries parsed ahead of the consumer.
const ENTRIES_AHEAD: usize = 32;

/// Where an archive is and how to open it.
#[derive(Clone)]
pub struct Source {
    pub store: Arc<dyn object_store::ObjectStore>,
    pub path: String,
    pub identities: Arc<Identities>,
}

impl Source {
    pub fn new(store: Arc<dyn object_store::ObjectStore>, path: impl Into<String>, identities: Identities) -> Self {
        Source {
            store,
            path: path.into(),
            identities: Arc::new(identities),
        }
    }
}

/// One entry of the archive, in archive order.
#[derive(Debug)]
pub enum Item {
    /// An object's file; `position` counts object files from 0.
    Object {
        position: usize,
        path: String,
        data: Vec<u8>,
    },
    /// `stowage/resourceset.json`.
    ResourceSet(Vec<u8>),
    /// `stowage/index.json`, read as it streams by: only its head and entry count are kept.
    Index(IndexHead),
}

/// What the restore needs of the index: its version and how many objects it lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexHead {
    pub format_version: u32,
    pub cluster_id: String,
    pub entries: u64,
}

/// One pass over an archive. Dropping it stops the download.
pub struct ArchiveStream {
    items: mpsc::Receiver<Item>,
    restore: tokio::task::JoinHandle<stowage_core::Result<stowage_core::Manifest>>,
    parser: tokio::task::JoinHandle<std::io::Result<()>>,
    path: String,
    cancel: CancellationToken,
}

impl ArchiveStream {
    /// Starts downloading `source`; the payload's bytes are counted in `progress`.
    pub fn open(source: &Source, progress: Progress) -> ArchiveStream {
        ArchiveStream::open_until(source, progress, CancellationToken::new())
    }

    /// [`open`](ArchiveStream::open), stopped once `cancel` fires: the tar reader's source
    /// fails (so it stops even in the middle of an entry), [`next`](ArchiveStream::next) ends
    /// and [`finish`](ArchiveStream::finish) says [`Error::Cancelled`] without waiting for the
    /// download, which dropping the stream aborts.
    pub fn open_until(source: &Source, progress: Progress, cancel: CancellationToken) -> ArchiveStream {
        let (sink, pipe) = tokio::io::duplex(PIPE_BYTES);
        let mut request = RestoreRequest::new(source.store.clone(), source.path.clone());
        request.identities = source.identities.clone();
        request.progress = progress;
        let restore = tokio::spawn(async move {
            let mut sink = sink;
            stowage_core::restore(request, &mut sink).await
            // The sink drops here: on failure the parser sees the stream end early.
        });
        let (sender, items) = mpsc::channel(ENTRIES_AHEAD);
        let pipe = CancellableRead::new(pipe, cancel.clone());
        let parser = tokio::task::spawn_blocking(move || parse(tokio_util::io::SyncIoBridge::new(pipe), &sender));
        ArchiveStream {
            items,
            restore,
            parser,
            path: source.path.clone(),
            cancel,
        }
    }

    /// The next entry, or None at the end of the tar (or when reading failed or was cancelled:
    /// see [`finish`]).
    ///
    /// [`finish`]: ArchiveStream::finish
    pub async fn next(&mut self) -> Option<Item> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            item = self.items.recv() => item,
        }
    }

    /// Reads what is left and says whether the whole pass was sound. The data path's verdict
    /// (manifest, size, SHA-256, age key) comes first: a damaged payload also breaks the tar.
    pub async fn finish(mut self) -> Result<()> {
        let cancel = self.cancel.clone();
        // A stalled download would keep a cancelled run waiting here: it is aborted on drop.
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Error::Cancelled),
            settled = self.settle() => settled,
        }
    }

    async fn settle(&mut self) -> Result<()> {
        while self.items.recv().await.is_some() {}
        let restored = (&mut self.restore).await;
        let parsed = (&mut self.parser).await;
        let archive = |reason: String| Error::Archive {
            path: self.path.clone(),
            reason,
        };
        match restored {
            Ok(Ok(_manifest)) => {}
            Ok(Err(error)) => return Err(Error::Core(error)),
            Err(join) => return Err(archive(format!("the download stopped: {join}"))),
        }
        match parsed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(archive(format!("not a readable tar: {error}"))),
            Err(join) => Err(archive(format!("the tar reader stopped: {join}"))),
        }
    }
}

impl Drop for ArchiveStream {
    fn drop(&mut self) {
        // A pass left early (every object done, or an error) stops downloading.
        self.restore.abort();
    }
}

/// Parses the tar from `reader`, sending each entry; then reads to the end of the stream,
/// also after a parse error, so the data path can finish its checks and give its verdict.
/// Stops quietly when the receiver is gone.
fn parse(mut reader: impl std::io::Read, sender: &mpsc::Sender<Item>) -> std::io::Result<()> {
    let parsed = send_entries(&mut reader, sender);
    if matches!(parsed, Ok(false)) {
        return Ok(());
    }
    // The tar ends with zero blocks; what follows (nothing, normally) must still be read.
    let drained = std::io::copy(&mut reader, &mut std::io::sink());
    parsed.and(drained).map(|_| ())
}

/// Sends every entry; false when the receiver stopped listening.
fn send_entries(reader: &mut impl std::io::Read, sender: &mpsc::Sender<Item>) -> std::io::Result<bool> {
    let mut archive = tar::Archive::new(reader);
    let mut position = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let item = if path == INDEX_PATH {
            Item::Index(read_index_head(&mut entry)?)
        } else {
            let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
            entry.read_to_end(&mut data)?;
            if path == RESOURCE_SET_PATH {
                Item::ResourceSet(data)
            } else if path.starts_with("stowage/") {
                continue;
            } else {
                position += 1;
                Item::Object {
                    position: position - 1,
                    path,
                    data,
                }
            }
        };
        if sender.blocking_send(item).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads the index as it streams, counting its entries without keeping them: the index of a
/// large archive is as large as its object count.
fn read_index_head(entry: impl std::io::Read) -> std::io::Result<IndexHead> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        format_version: u32,
        #[serde(default)]
        cluster_id: String,
        #[serde(default)]
        entries: Count,
    }
    let head: Head = serde_json::from_reader(std::io::BufReader::new(entry))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{INDEX_PATH}: {e}")))?;
    Ok(IndexHead {
        format_version: head.format_version,
        cluster_id: head.cluster_id,
        entries: head.entries.0,
    })
}

/// A JSON array's length, its elements skipped.
#[derive(Default)]
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Count, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of index entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut count = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(Count(count))
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}
