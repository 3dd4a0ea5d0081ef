//! Where a large index waits for the end of its archive: numbered scratch objects next to the
//! payload (`<payload key>.scratch/00001`, …, see core's `Layout::scratch_key`), in the
//! backup's own storage. The index must be the archive's last entry, and holding all of it
//! until then, even deflated, made the backup's memory grow with the object count; local disk
//! is not an option (the controller must not need a volume, and temp files are what the
//! issue forbids). So the index is cut into segments, each stored as soon as it is full and
//! read back one at a time at the end.
//!
//! The run that owns them deletes them when it ends, whatever the outcome ([`Segments::delete`]),
//! and a run dropped midway (a controller shutting down) leaves a [`Cleanup`] that deletes
//! them from a task of its own, after the segment being stored, if any, is in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use stowage_core::Error as CoreError;
use stowage_core::Layout;
use stowage_core::layout::{MAX_SCRATCH_NUMBER, object_path};

use crate::error::{Error, Result};

/// Index JSON per segment: about 4,500 objects' entries, which deflate to 150-200 KiB (UIDs
/// are random and deflate least). Big enough that a 50,000-object backup stores a dozen small
/// objects, small enough that one segment held (and one read back) costs little.
pub const SEGMENT_JSON_BYTES: usize = 1 << 20;

/// The scratch objects of one backup's index. Cheap to clone: clones share the count.
#[derive(Clone, Debug)]
pub struct Segments {
    store: Arc<dyn ObjectStore>,
    payload: String,
    /// Index JSON that closes a segment (a test makes it small to get many).
    json_bytes: usize,
    /// Segments whose upload started; numbers run from 1.
    started: Arc<AtomicU32>,
    /// Held by the upload in flight, so that a cleanup deletes after it rather than before.
    in_flight: Arc<tokio::sync::Mutex<()>>,
}

impl Segments {
    /// The segments of the index of the archive at `payload` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, payload: &str) -> Segments {
        Segments {
            store,
            payload: payload.to_string(),
            json_bytes: SEGMENT_JSON_BYTES,
            started: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    /// With segments closing after `json_bytes` of index JSON instead of [`SEGMENT_JSON_BYTES`].
    pub fn with_json_bytes(mut self, json_bytes: usize) -> Segments {
        self.json_bytes = json_bytes.max(1);
        self
    }

    /// Index JSON after which the segment being written is stored.
    pub fn json_bytes(&self) -> usize {
        self.json_bytes
    }

    /// Segments stored (or being stored) so far.
    pub fn count(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
    }

    /// Stores the next segment.
    pub async fn put(&self, segment: PutPayload) -> Result<()> {
        let number = self.count() + 1;
        if number > MAX_SCRATCH_NUMBER {
            return Err(Error::Io {
                what: "storing the archive's index".into(),
                source: std::io::Error::other(format!(
                    "the index needs more than {MAX_SCRATCH_NUMBER} segments: back up fewer objects at a time"
                )),
            });
        }
        let key = Layout::scratch_key(&self.payload, number);
        let path = key_path(&key)?;
        // Counted before it starts, so that a cleanup looks for it whatever happens next; the
        // upload runs as a task holding the lock, so that it finishes even if this run is
        // dropped, and a cleanup waits for it.
        self.started.store(number, Ordering::SeqCst);
        let lock = self.in_flight.clone().lock_owned().await;
        let store = self.store.clone();
        let upload = tokio::spawn(async move {
            let stored = store.put(&path, segment).await;
            drop(lock);
            stored.map_err(|e| Error::from(CoreError::storage("index segment upload", &path, e)))
        });
        upload.await.map_err(|join| Error::Io {
            what: format!("storing {key}"),
            source: std::io::Error::other(join),
        })??;
        Ok(())
    }

    /// Reads segment `number` back, whole (it is small).
    pub async fn get(&self, number: u32) -> Result<bytes::Bytes> {
        let path = key_path(&Layout::scratch_key(&self.payload, number))?;
        let read = async { self.store.get(&path).await?.bytes().await };
        read.await
            .map_err(|e| CoreError::storage("index segment download", &path, e).into())
    }

    /// Deletes every segment stored so far (after the one being stored, if any, is in).
    pub async fn delete(&self) -> Result<()> {
        let _no_upload = self.in_flight.lock().await;
        for number in 1..=self.count() {
            let path = key_path(&Layout::scratch_key(&self.payload, number))?;
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CoreError::storage("index segment delete", &path, e).into()),
            }
        }
        Ok(())
    }
}

fn key_path(key: &str) -> Result<Path> {
    Ok(object_path(key).map_err(stowage_core::Error::from)?)
}

/// Deletes a run's segments when dropped, unless [`Cleanup::disarm`]ed: the run was dropped
/// before it could delete them itself.
pub struct Cleanup(Option<Segments>);

impl Cleanup {
    pub fn new(segments: &Segments) -> Cleanup {
        Cleanup(Some(segments.clone()))
    }

    /// The run deleted them (or tried): nothing left to do.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(segments) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(error) = segments.delete().await {
                    tracing::warn!(%error, "deleting the index segments of a cancelled backup failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::TryStreamExt as _;

    async fn keys(store: &dyn ObjectStore) -> Vec<String> {
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
        listed.into_iter().map(|o| o.location.to_string()).collect()
    }

    /// Lets the spawned cleanup run as far as it can (the test runtime has one thread, and the
    /// in-memory store answers at once).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_dropped_run_deletes_its_segments_after_the_one_being_stored() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let segments = Segments::new(store.clone(), "a/b.tar.gz");
        segments.put(PutPayload::from(vec![1; 10])).await.unwrap();
        assert_eq!(segments.get(1).await.unwrap().as_ref(), [1; 10]);
        // Segment 2's upload is in flight when the run is dropped: held here, as its task holds it.
        let upload = segments.in_flight.clone().lock_owned().await;
        segments.started.store(2, Ordering::SeqCst);
        drop(Cleanup::new(&segments));
        settle().await;
        // The upload lands after the run was dropped, and is deleted all the same.
        let second = key_path(&Layout::scratch_key("a/b.tar.gz", 2)).unwrap();
        store.put(&second, PutPayload::from(vec![2; 10])).await.unwrap();
        assert_eq!(keys(store.as_ref()).await.len(), 2, "the cleanup waits for the upload");
        drop(upload);
        settle().await;
        assert_eq!(keys(store.as_ref()).await, Vec::<String>::new());

        // A disarmed cleanup leaves them to the run.
        segments.put(PutPayload::from(vec![3; 10])).await.unwrap();
        Cleanup::new(&segments).disarm();
        settle().await;
        assert_eq!(keys(store.as_ref()).await, ["a/b.tar.gz.scratch/00003"]);
    }
}
