//! Wiring: the scheduler's context and its controller. Schedules are watched everywhere (or
//! in the watch namespace); so are the runs of every kind whose CRD is installed, into the
//! [`RunStore`], so a run that finishes wakes its schedule at once (history limits, Forbid)
//! instead of at the next tick.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use stowage_api::backup_schedule::TRIGGER_ANNOTATION;
use stowage_api::{BackupSchedule, RunKind};
use stowage_operator::Context;

use crate::events::EventQueue;
use crate::memory::Memory;
use crate::metrics::SchedulerMetrics;
use crate::priority::RunsFirst;
use crate::runs;
use crate::store::RunStore;

/// The controller's name: Events' reporting controller, Lease name, binary name.
pub const CONTROLLER: &str = "scheduler-ctrl";

/// How long a stopping scheduler waits for its last Events to be published.
const FLUSH_EVENTS: Duration = Duration::from_secs(5);
/// How long the first list of runs may take before the scheduler says it is still waiting.
const SYNC_PATIENCE: Duration = Duration::from_secs(30);

/// The kit's context plus the scheduler's own metrics, run store, Event queue and memory.
pub struct SchedulerContext {
    pub kit: Arc<Context>,
    pub metrics: SchedulerMetrics,
    /// The runs of every watched kind, by schedule.
    pub runs: RunStore,
    /// Events, published off the reconcile path.
    pub events: EventQueue,
    /// What this process wrote that the caches may not show yet.
    pub memory: Memory,
    /// Holds other writes while runs are being created.
    pub runs_first: Arc<RunsFirst>,
}

impl AsRef<Context> for SchedulerContext {
    fn as_ref(&self) -> &Context {
        &self.kit
    }
}

impl SchedulerContext {
    /// Registers the scheduler's metrics in the kit's registry and finds which run kinds
    /// are installed (and so can be watched).
    pub async fn new(kit: Arc<Context>) -> anyhow::Result<SchedulerContext> {
        let metrics = SchedulerMetrics::register(&kit.metrics.registry)?;
        let mut watched = Vec::new();
        for kind in RunKind::ALL {
            let api: Api<DynamicObject> = Api::all_with(kit.client.clone(), &runs::api_resource(kind));
            match api.list(&ListParams::default().limit(1)).await {
                Ok(_) => watched.push(kind),
                Err(error) => {
                    tracing::warn!(%kind, %error, "run kind not served: its runs are polled every 10 s while active");
                }
            }
        }
        let runs_first = Arc::new(RunsFirst::default());
        Ok(SchedulerContext {
            events: EventQueue::start(kit.clone(), runs_first.clone()),
            runs_first,
            kit,
            metrics,
            runs: RunStore::new(&watched),
            memory: Memory::default(),
        })
    }

    /// True when changes of runs of `kind` wake their schedule.
    pub fn watches(&self, kind: RunKind) -> bool {
        self.runs.watches(kind)
    }
}

/// Runs the scheduler until `ctx.kit.shutdown` is cancelled. With the kit's
/// `watch_namespace` set (`--watch-namespace`), only the schedules of that namespace and
/// their runs are watched: a namespace-scoped install, or tests sharing one cluster.
pub async fn run(ctx: Arc<SchedulerContext>) -> anyhow::Result<()> {
    let schedules: Api<BackupSchedule> = ctx.kit.watched();
    schedules.list(&ListParams::default().limit(1)).await.map_err(|error| {
        anyhow::anyhow!("listing BackupSchedules failed ({error}): is the CRD installed (deploy/crds)?")
    })?;
    let shutdown = ctx.kit.shutdown.clone();

    // The run watches fill the store and wake the schedules whose runs changed.
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let watches: Vec<_> = RunKind::ALL
        .into_iter()
        .filter(|kind| ctx.watches(*kind))
        .map(|kind| {
            let (ctx, wake) = (ctx.clone(), wake.clone());
            tokio::spawn(async move {
                let only = ctx.kit.watch_namespace.clone();
                ctx.runs.watch(ctx.kit.client.clone(), kind, only, wake).await;
            })
        })
        .collect();
    drop(wake);
    // Until every kind is listed, a schedule would see none of its runs.
    let synced = ctx.runs.synced();
    tokio::pin!(synced);
    loop {
        tokio::select! {
            () = &mut synced => break,
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(SYNC_PATIENCE) => {
                tracing::warn!("still waiting for the first list of runs: can the scheduler list and watch every run kind?");
            }
        }
    }

    // Schedules wake on what users change (spec, the trigger annotation), not on the status
    // the scheduler writes itself: that would be a second pass per write, for nothing.
    let (reader, writer) = reflector::store();
    let forget = ctx.clone();
    let stream = watcher(schedules, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(schedule)) = event {
                forget.memory.forget(schedule);
            }
        })
        .applied_objects()
        .predicate_filter(user_change, Default::default())
        .boxed();
    let controller = Controller::for_stream(stream, reader).reconcile_on(woken);
    stowage_operator::run_controller(controller, ctx.clone(), shutdown, crate::reconcile::reconcile).await;
    for watch in watches {
        watch.abort();
    }
    ctx.events.flush(FLUSH_EVENTS).await;
    Ok(())
}

/// What a user changes: the spec (generation), the manual trigger, the object itself (UID).
fn user_change(schedule: &BackupSchedule) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    schedule.meta().uid.hash(&mut hasher);
    schedule.meta().generation.hash(&mut hasher);
    schedule.annotations().get(TRIGGER_ANNOTATION).hash(&mut hasher);
    Some(hasher.finish())
}

/// Starts the scheduler on the kit's runner: what `main` calls.
pub async fn start(kit: Arc<Context>) -> anyhow::Result<()> {
    let ctx = Arc::new(SchedulerContext::new(kit).await?);
    run(ctx).await
}
