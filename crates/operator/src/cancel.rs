//! Stopping runs in flight when their object is deleted, from the controller's own watch.
//!
//! kube's Controller never reconciles an object while a reconcile of it is in flight, and a
//! run (a backup, a restore) is one long reconcile: the deletion of a running object would
//! only be seen after its run ended. The controller's watch does see it, though. So [`watch`]
//! builds the controller's trigger stream with a [`Registry`] of running runs on it: each run
//! registers while it runs, and the registry cancels a run when its object is deleted
//! (deletionTimestamp set, a Delete, a namesake with another UID, or missing from a relist).
//! One watch serves every run, instead of one watch per run.
//! The watch must not filter its objects by labels or fields: an object leaving a selector
//! is a Delete to the watch, and would cancel its run.
//!
//! A cancelled run should stop the way a failure does, through the data path's own error
//! handling: [`RunGuard::reader`] fails its source, so core aborts the upload, and the run's
//! Pod, status and Event are handled by the controller rather than left to a dropped future.

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::{Stream, StreamExt as _};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The reason (condition, Event detail, metric label) of a run stopped because its object was
/// deleted.
pub const CANCELLED: &str = "Cancelled";

/// Why a run stopped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its object was deleted (by a user, or a schedule's `concurrencyPolicy: Replace`).
    Deleted,
    /// The controller is shutting down.
    Shutdown,
}

/// The watch of `api`'s objects for `Controller::for_stream(stream, store)`, with the registry
/// it feeds. The registry observes each event after the store has applied it, which
/// [`Registry::register`] relies on to miss no deletion (Controller applies its own backoff
/// to the stream's errors, as `Controller::new` does).
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    Store<K>,
    Registry<K>,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let registry = Registry::new(store.clone());
    let observer = registry.clone();
    let stream = watcher(api, config)
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                observer.observe(event);
            }
        })
        .applied_objects();
    (stream, store, registry)
}

/// The running runs of one kind, each cancellable when its object is deleted. Cheap to clone.
pub struct Registry<K: Resource<DynamicType = ()> + 'static> {
    runs: Arc<Mutex<Runs>>,
    store: Store<K>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for Registry<K> {
    fn clone(&self) -> Self {
        Registry {
            runs: self.runs.clone(),
            store: self.store.clone(),
        }
    }
}

#[derive(Default)]
struct Runs {
    by_id: HashMap<u64, Run>,
    next_id: u64,
    /// UIDs listed since the watch (re)started, until the list is complete.
    relisting: Option<HashSet<String>>,
}

struct Run {
    namespace: Option<String>,
    name: String,
    uid: Option<String>,
    token: CancellationToken,
    deleted: Arc<AtomicBool>,
}

impl Run {
    fn cancel(&self, why: &str) {
        if !self.token.is_cancelled() {
            tracing::info!(name = %self.name, namespace = ?self.namespace, "the run's object {why}: cancelling the run");
        }
        self.deleted.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    /// Whether `object`, as the watch now sees it, means this run's object is being deleted
    /// or was deleted and created again under the same name.
    fn ended_by<K: Resource>(&self, object: &K) -> bool {
        let uid = object.meta().uid.as_ref();
        if uid == self.uid.as_ref() {
            object.meta().deletion_timestamp.is_some()
        } else {
            object.meta().name.as_ref() == Some(&self.name) && object.meta().namespace == self.namespace
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Registry<K> {
    /// A registry that checks new runs against `store`, the reflector store fed by the same
    /// stream as [`Registry::observe`] (and ready, as a Controller's store is when it reconciles).
    pub fn new(store: Store<K>) -> Self {
        Registry {
            runs: Arc::default(),
            store,
        }
    }

    fn runs(&self) -> MutexGuard<'_, Runs> {
        // A panic elsewhere leaves the map consistent: every change to it is one statement.
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a run of `object` until the guard is dropped. Its token is a child of
    /// `shutdown`, so a stopping controller cancels the run the same way. An object the store
    /// already shows deleted gives a guard cancelled from the start.
    pub fn register(&self, object: &K, shutdown: &CancellationToken) -> RunGuard {
        let run = Run {
            namespace: object.namespace(),
            name: object.name_any(),
            uid: object.uid(),
            token: shutdown.child_token(),
            deleted: Arc::default(),
        };
        let (token, deleted) = (run.token.clone(), run.deleted.clone());
        // Registered first, checked after: a deletion the store has not applied yet is
        // observed after this insertion (the stream applies to the store, then observes).
        let id = {
            let mut runs = self.runs();
            let id = runs.next_id;
            runs.next_id += 1;
            runs.by_id.insert(id, run);
            id
        };
        let guard = RunGuard {
            token,
            deleted,
            id,
            runs: self.runs.clone(),
        };
        let current = self.store.get(&ObjectRef::from_obj(object));
        let ended = match &current {
            None => Some("is gone"),
            Some(current) if current.uid() != object.uid() => Some("was replaced"),
            Some(current) if current.meta().deletion_timestamp.is_some() => Some("is being deleted"),
            Some(_) => None,
        };
        if let Some(why) = ended
            && let Some(run) = self.runs().by_id.get(&id)
        {
            run.cancel(why);
        }
        guard
    }

    /// Cancels the runs that `event`, from the controller's watch, says were deleted.
    pub fn observe(&self, event: &watcher::Event<K>) {
        let mut runs = self.runs();
        match event {
            watcher::Event::Apply(object) => runs.cancel_where(|run| run.ended_by(object), "is being deleted"),
            watcher::Event::InitApply(object) => {
                if let (Some(seen), Some(uid)) = (runs.relisting.as_mut(), object.uid()) {
                    seen.insert(uid);
                }
                runs.cancel_where(|run| run.ended_by(object), "is being deleted");
            }
            watcher::Event::Delete(object) => {
                let uid = object.uid();
                runs.cancel_where(|run| run.uid == uid, "was deleted");
            }
            watcher::Event::Init => runs.relisting = Some(HashSet::new()),
            // Deleted while the watch was down: its Delete event was never sent.
            watcher::Event::InitDone => {
                if let Some(seen) = runs.relisting.take() {
                    runs.cancel_where(
                        |run| !run.uid.as_ref().is_some_and(|uid| seen.contains(uid)),
                        "is missing from a new list",
                    );
                }
            }
        }
    }

    /// How many runs are registered.
    pub fn len(&self) -> usize {
        self.runs().by_id.len()
    }

    /// Whether no run is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Runs {
    // Runs in flight are few (the controller's concurrency), so a scan per event is cheap.
    fn cancel_where(&self, ended: impl Fn(&Run) -> bool, why: &str) {
        self.by_id
            .values()
            .filter(|run| ended(run))
            .for_each(|run| run.cancel(why));
    }
}

/// One registered run: cancelled when its object is deleted or the controller stops.
/// Dropping it unregisters the run.
pub struct RunGuard {
    token: CancellationToken,
    deleted: Arc<AtomicBool>,
    id: u64,
    runs: Arc<Mutex<Runs>>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.by_id.remove(&self.id);
    }
}

impl RunGuard {
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
        CancellableRead::new(source, self.token.clone())
    }

    /// The run's token, for code below the controller that takes a plain token.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// A reader that fails once its run is cancelled, so that the data path stops through its
/// error handling (aborting the upload) instead of being dropped with the upload open.
pub struct CancellableRead<R> {
    source: R,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R> CancellableRead<R> {
    /// `source` failing its reads once `token` is cancelled.
    pub fn new(source: R, token: CancellationToken) -> Self {
        CancellableRead {
            source,
            cancelled: Box::pin(token.cancelled_owned()),
        }
    }
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::reflector::store::Writer;
    use tokio::io::AsyncReadExt as _;
    use watcher::Event;

    use super::*;

    fn object(name: &str, uid: &str) -> ConfigMap {
        let metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        };
        ConfigMap {
            metadata,
            ..ConfigMap::default()
        }
    }

    fn deleting(mut object: ConfigMap) -> ConfigMap {
        object.metadata.deletion_timestamp = Some(crate::conditions::to_time(chrono::Utc::now()));
        object
    }

    /// A registry over a ready store holding `objects`, and a feed that applies an event to the
    /// store and then to the registry, in the order [`watch`] does.
    fn registry(objects: &[ConfigMap]) -> (Registry<ConfigMap>, impl FnMut(Event<ConfigMap>) + use<>) {
        let mut writer = Writer::<ConfigMap>::default();
        let registry = Registry::new(writer.as_reader());
        let observer = registry.clone();
        let mut feed = move |event: Event<ConfigMap>| {
            writer.apply_watcher_event(&event);
            observer.observe(&event);
        };
        feed(Event::Init);
        for object in objects {
            feed(Event::InitApply(object.clone()));
        }
        feed(Event::InitDone);
        (registry, feed)
    }

    #[test]
    fn a_deletion_timestamp_a_delete_or_a_namesake_cancels_only_that_run() {
        let (a, b, c) = (object("a", "1"), object("b", "2"), object("c", "3"));
        let (runs, mut feed) = registry(&[a.clone(), b.clone(), c.clone()]);
        let shutdown = CancellationToken::new();
        let (run_a, run_b, run_c) = (
            runs.register(&a, &shutdown),
            runs.register(&b, &shutdown),
            runs.register(&c, &shutdown),
        );
        feed(Event::Apply(a.clone()));
        assert_eq!(run_a.stop(), None, "a plain update cancels nothing");
        feed(Event::Apply(deleting(a)));
        assert_eq!(
            (run_a.stop(), run_b.stop(), run_c.stop()),
            (Some(Stop::Deleted), None, None)
        );
        feed(Event::Delete(b));
        assert_eq!((run_b.stop(), run_c.stop()), (Some(Stop::Deleted), None));
        feed(Event::Apply(object("c", "4")));
        assert_eq!(run_c.stop(), Some(Stop::Deleted), "created again under the same name");
    }

    #[test]
    fn a_relist_cancels_the_runs_whose_object_it_no_longer_lists() {
        let (a, b) = (object("a", "1"), object("b", "2"));
        let (runs, mut feed) = registry(&[a.clone(), b.clone()]);
        let shutdown = CancellationToken::new();
        let (run_a, run_b) = (runs.register(&a, &shutdown), runs.register(&b, &shutdown));
        feed(Event::Init);
        feed(Event::InitApply(a));
        assert_eq!(run_b.stop(), None, "the list is not complete yet");
        feed(Event::InitDone);
        assert_eq!((run_a.stop(), run_b.stop()), (None, Some(Stop::Deleted)));
    }

    #[test]
    fn a_run_of_an_object_already_deleted_is_cancelled_from_the_start() {
        let (a, b) = (object("a", "1"), object("b", "2"));
        let (runs, mut feed) = registry(&[a.clone(), deleting(b.clone())]);
        let shutdown = CancellationToken::new();
        assert_eq!(
            runs.register(&b, &shutdown).stop(),
            Some(Stop::Deleted),
            "being deleted"
        );
        assert_eq!(
            runs.register(&object("gone", "9"), &shutdown).stop(),
            Some(Stop::Deleted)
        );
        feed(Event::Apply(object("a", "5")));
        assert_eq!(runs.register(&a, &shutdown).stop(), Some(Stop::Deleted), "replaced");
    }

    #[test]
    fn dropping_the_guard_unregisters_and_shutdown_is_not_a_deletion() {
        let a = object("a", "1");
        let (runs, mut feed) = registry(std::slice::from_ref(&a));
        let shutdown = CancellationToken::new();
        let run = runs.register(&a, &shutdown);
        assert_eq!(runs.len(), 1);
        shutdown.cancel();
        assert_eq!(run.stop(), Some(Stop::Shutdown));
        drop(run);
        assert!(runs.is_empty());
        feed(Event::Delete(a));
    }

    #[tokio::test]
    async fn the_reader_fails_once_the_run_is_cancelled() {
        let a = object("a", "1");
        let (runs, mut feed) = registry(std::slice::from_ref(&a));
        let run = runs.register(&a, &CancellationToken::new());
        let mut reader = run.reader(&b"data"[..]);
        let mut buf = [0u8; 2];
        assert_eq!(reader.read(&mut buf).await.ok(), Some(2));
        feed(Event::Delete(a));
        run.cancelled().await;
        assert!(reader.read(&mut buf).await.is_err());
    }
}
