//! Streaming uploads: small payloads in one PUT, large ones as a multipart
//! upload with a bounded number of parts in flight, aborted on any failure so
//! nothing is left behind. An upload that is dropped unfinished (its backup's
//! future was cancelled, say by a controller shutting down) is aborted too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

use crate::error::{Error, Result};

/// Tuning of uploads.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// Size of each multipart part (S3 requires at least 5 MiB). Doubles every
    /// 1,000 parts so a stream of any size stays under S3's 10,000-part limit.
    pub part_size: usize,
    /// Parts uploading at once. Memory use is about `part_size * (parts_in_flight + 1)`.
    pub parts_in_flight: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: 8 * 1024 * 1024,
            parts_in_flight: 2,
        }
    }
}

enum State {
    /// Nothing sent yet: a payload smaller than one part becomes a single PUT.
    Buffering,
    Multipart {
        upload: Box<dyn MultipartUpload>,
        tasks: JoinSet<object_store::Result<()>>,
    },
    /// Completed or aborted: nothing left to clean up.
    Closed,
}

/// An upload in progress. Feed it with [`Uploader::push`], then call
/// [`Uploader::finish`] or [`Uploader::abort`].
pub(crate) struct Uploader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    options: UploadOptions,
    part: Vec<Bytes>,
    part_len: usize,
    parts_sent: usize,
    state: State,
}

impl Uploader {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, path: Path, options: UploadOptions) -> Self {
        Uploader {
            store,
            path,
            options,
            part: Vec::new(),
            part_len: 0,
            parts_sent: 0,
            state: State::Buffering,
        }
    }

    fn current_part_size(&self) -> usize {
        let doublings = (self.parts_sent / 1000).min(10) as u32;
        self.options.part_size.max(5 * 1024 * 1024) << doublings
    }

    /// Adds bytes; waits while `parts_in_flight` parts are uploading.
    pub(crate) async fn push(&mut self, mut chunk: Bytes) -> Result<()> {
        while !chunk.is_empty() {
            let room = self.current_part_size() - self.part_len;
            let piece = chunk.split_to(room.min(chunk.len()));
            self.part_len += piece.len();
            self.part.push(piece);
            if self.part_len == self.current_part_size() {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<()> {
        if let State::Buffering = self.state {
            let upload = self
                .store
                .put_multipart(&self.path)
                .await
                .map_err(|e| Error::storage("multipart upload start", &self.path, e))?;
            self.state = State::Multipart {
                upload,
                tasks: JoinSet::new(),
            };
        }
        let State::Multipart { upload, tasks } = &mut self.state else {
            unreachable!("multipart state set above")
        };
        while tasks.len() >= self.options.parts_in_flight.max(1) {
            join_one(tasks, &self.path).await?;
        }
        let payload = PutPayload::from_iter(std::mem::take(&mut self.part));
        tasks.spawn(upload.put_part(payload));
        self.part_len = 0;
        self.parts_sent += 1;
        Ok(())
    }

    /// Uploads what is left and commits the object.
    pub(crate) async fn finish(mut self) -> Result<()> {
        if let State::Buffering = self.state {
            let payload = PutPayload::from_iter(std::mem::take(&mut self.part));
            self.store
                .put(&self.path, payload)
                .await
                .map_err(|e| Error::storage("upload", &self.path, e))?;
            return Ok(());
        }
        if self.part_len > 0 {
            self.send_part().await?;
        }
        let State::Multipart { upload, tasks } = &mut self.state else {
            unreachable!("multipart state checked above")
        };
        while !tasks.is_empty() {
            join_one(tasks, &self.path).await?;
        }
        upload
            .complete()
            .await
            .map_err(|e| Error::storage("multipart upload completion", &self.path, e))?;
        self.state = State::Closed;
        Ok(())
    }

    /// Cancels the upload and removes its parts. A storage outage may be what
    /// failed the upload, so the abort is retried for a while rather than
    /// leaving an open multipart upload (and its billed parts) behind.
    pub(crate) async fn abort(mut self) {
        if let State::Multipart { upload, tasks } = std::mem::replace(&mut self.state, State::Closed) {
            abort_multipart(upload, tasks, self.path.clone()).await;
        }
    }
}

impl Drop for Uploader {
    /// A multipart upload still open here was neither finished nor aborted:
    /// the backup's future was dropped mid-stream. Abort it from a task of its
    /// own, so its parts are not left behind in the bucket (and billed).
    fn drop(&mut self) {
        if let State::Multipart { upload, tasks } = std::mem::replace(&mut self.state, State::Closed)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(abort_multipart(upload, tasks, self.path.clone()));
        }
    }
}

/// Stops the part uploads, then aborts. A storage outage may be what failed
/// the upload, so the abort is retried for a while.
async fn abort_multipart(
    mut upload: Box<dyn MultipartUpload>,
    mut tasks: JoinSet<object_store::Result<()>>,
    path: Path,
) {
    tasks.shutdown().await;
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=ABORT_ATTEMPTS {
        match upload.abort().await {
            Ok(()) => return,
            Err(e) if attempt == ABORT_ATTEMPTS => {
                tracing::warn!(%path, error = %e, "could not abort the multipart upload; the storage's lifecycle rules must clean it up");
            }
            Err(e) => {
                tracing::debug!(%path, error = %e, attempt, "multipart abort failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// About a minute of retries in all.
const ABORT_ATTEMPTS: u32 = 9;

async fn join_one(tasks: &mut JoinSet<object_store::Result<()>>, path: &Path) -> Result<()> {
    match tasks.join_next().await {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(Error::storage("part upload", path, e)),
        Some(Err(join)) => Err(Error::Stage {
            stage: "part upload",
            source: std::io::Error::other(join),
        }),
    }
}
