//! Stopping a run in flight: when its object is deleted, or when the controller shuts down.
//!
//! kube's Controller never reconciles an object while a reconcile of it is in flight, and a
//! run is one long reconcile: the deletion of a running ExecBackup would only be seen after
//! its command ended. So each run watches its own object while it runs and cancels itself
//! when the object is deleted (deletionTimestamp set, gone, or replaced by a namesake). The
//! run then stops the way a failure does, through the data path's own error handling (the
//! source fails, so core aborts the multipart upload; the Pod is deleted; no manifest is
//! written; the status and Event say it was cancelled), rather than being dropped midway:
//! core would still abort the upload from its uploader's `Drop`, but the Pod, the status
//! and the Event would be left to chance.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::run::AbortOnDrop;

/// Why a run stopped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its object was deleted (by a user, or a schedule's `concurrencyPolicy: Replace`).
    Deleted,
    /// The controller is shutting down.
    Shutdown,
}

/// The cancellation of one run: cancelled when its object is deleted or the controller stops.
/// The watch of the object ends when this is dropped.
pub struct RunCancel {
    token: CancellationToken,
    deleted: Arc<AtomicBool>,
    _watch: AbortOnDrop,
}

impl RunCancel {
    /// Starts watching `object` (through `api`, which must be bound to its namespace). A child
    /// of `shutdown`, so that a stopping controller cancels the run the same way.
    pub fn watch<K>(api: Api<K>, object: &K, shutdown: &CancellationToken) -> RunCancel
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let token = shutdown.child_token();
        let deleted = Arc::new(AtomicBool::new(false));
        let watch = tokio::spawn(watch_deletion(
            api,
            object.name_any(),
            object.uid(),
            deleted.clone(),
            token.clone(),
        ));
        RunCancel {
            token,
            deleted,
            _watch: AbortOnDrop(watch),
        }
    }

    /// Completes when the run is cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Why the run was cancelled, or None while it is not.
    pub fn stop(&self) -> Option<Stop> {
        if !self.token.is_cancelled() {
            None
        } else if self.deleted.load(Ordering::SeqCst) {
            Some(Stop::Deleted)
        } else {
            Some(Stop::Shutdown)
        }
    }

    /// Why a run that failed stopped. The watch may deliver a deletion after the failure it
    /// caused (the garbage collector deleting the Pod of a run whose object is gone), so
    /// without a cancellation yet the object is read once more.
    pub async fn stop_after_failure<K>(&self, api: &Api<K>, object: &K) -> Option<Stop>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        if let Some(stop) = self.stop() {
            return Some(stop);
        }
        match api.get_opt(&object.name_any()).await {
            Ok(Some(current)) if current.meta().deletion_timestamp.is_none() && current.uid() == object.uid() => None,
            Ok(_) => Some(Stop::Deleted),
            Err(error) => {
                tracing::debug!(%error, "reading the run's object after its failure");
                None
            }
        }
    }

    /// `source` failing its reads once the run is cancelled.
    pub fn reader<R>(&self, source: R) -> CancellableRead<R> {
        CancellableRead {
            source,
            cancelled: Box::pin(self.token.clone().cancelled_owned()),
        }
    }
}

/// Cancels `token` (marking `deleted` first) when object `name` with `uid` is deleted.
async fn watch_deletion<K>(
    api: Api<K>,
    name: String,
    uid: Option<String>,
    deleted: Arc<AtomicBool>,
    token: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut events = pin!(watcher::watch_object(api, &name).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(Some(object)) if object.meta().deletion_timestamp.is_none() && object.uid() == uid => {}
            // Being deleted, gone, or gone and created again under the same name.
            Ok(_) => {
                tracing::info!(%name, "the run's object was deleted: cancelling the run");
                deleted.store(true, Ordering::SeqCst);
                token.cancel();
                return;
            }
            Err(error) => tracing::debug!(%error, %name, "watching the run's object (retrying)"),
        }
    }
}

/// A reader that fails once its run is cancelled, so that the data path stops through its
/// error handling (aborting the upload) instead of being dropped with the upload open.
pub struct CancellableRead<R> {
    source: R,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for CancellableRead<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::other("the run was cancelled")));
        }
        Pin::new(&mut this.source).poll_read(cx, buf)
    }
}
