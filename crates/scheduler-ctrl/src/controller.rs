//! Wiring: the scheduler's context and its controller. Schedules are watched everywhere;
//! so are the runs of every kind whose CRD is installed, so a run that finishes wakes its
//! schedule at once (history limits, Forbid) instead of at the next tick.

use std::sync::Arc;

use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use stowage_api::backup_schedule::{SCHEDULE_LABEL, SCHEDULE_NAMESPACE_LABEL};
use stowage_api::{BackupSchedule, RunKind};
use stowage_operator::Context;

use crate::metrics::SchedulerMetrics;
use crate::runs;

/// The controller's name: Events' reporting controller, Lease name, binary name.
pub const CONTROLLER: &str = "scheduler-ctrl";

/// The kit's context plus the scheduler's own metrics and the run kinds it watches.
pub struct SchedulerContext {
    pub kit: Arc<Context>,
    pub metrics: SchedulerMetrics,
    watched: Vec<RunKind>,
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
        Ok(SchedulerContext { kit, metrics, watched })
    }

    /// True when changes of runs of `kind` wake their schedule.
    pub fn watches(&self, kind: RunKind) -> bool {
        self.watched.contains(&kind)
    }
}

/// Runs the scheduler until `ctx.kit.shutdown` is cancelled. With the kit's
/// `watch_namespace` set (`--watch-namespace`), only the schedules of that namespace and
/// their runs are watched: a namespace-scoped install, or tests sharing one cluster.
pub async fn run(ctx: Arc<SchedulerContext>) -> anyhow::Result<()> {
    let client = ctx.kit.client.clone();
    let only = ctx.kit.watch_namespace.clone();
    let schedules: Api<BackupSchedule> = ctx.kit.watched();
    schedules.list(&ListParams::default().limit(1)).await.map_err(|error| {
        anyhow::anyhow!("listing BackupSchedules failed ({error}): is the CRD installed (deploy/crds)?")
    })?;
    let mut controller = Controller::new(schedules, watcher::Config::default().any_semantic());
    for kind in ctx.watched.clone() {
        let resource = runs::api_resource(kind);
        let (api, selector) = match &only {
            Some(namespace) if kind.cluster_scoped() => (
                Api::all_with(client.clone(), &resource),
                format!("{SCHEDULE_LABEL},{SCHEDULE_NAMESPACE_LABEL}={namespace}"),
            ),
            Some(namespace) => (
                Api::namespaced_with(client.clone(), namespace, &resource),
                SCHEDULE_LABEL.to_string(),
            ),
            None => (Api::all_with(client.clone(), &resource), SCHEDULE_LABEL.to_string()),
        };
        let config = watcher::Config::default().labels(&selector).any_semantic();
        controller = controller.watches_with(api, resource, config, schedule_of);
    }
    let shutdown = ctx.kit.shutdown.clone();
    stowage_operator::run_controller(controller, ctx, shutdown, crate::reconcile::reconcile).await;
    Ok(())
}

/// The schedule a run belongs to, from its labels.
fn schedule_of(run: DynamicObject) -> Option<ObjectRef<BackupSchedule>> {
    let labels = run.labels();
    let name = labels.get(SCHEDULE_LABEL)?;
    let namespace = run
        .meta()
        .namespace
        .as_deref()
        .or(labels.get(SCHEDULE_NAMESPACE_LABEL).map(String::as_str))?;
    Some(ObjectRef::new(name).within(namespace))
}

/// Starts the scheduler on the kit's runner: what `main` calls.
pub async fn start(kit: Arc<Context>) -> anyhow::Result<()> {
    let ctx = Arc::new(SchedulerContext::new(kit).await?);
    run(ctx).await
}
