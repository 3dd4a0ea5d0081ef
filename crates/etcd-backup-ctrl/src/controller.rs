//! Wiring: the controller's context and its watch. EtcdBackups are reconciled when their
//! generation changes or their deletion starts, never because of their own status writes,
//! so a failed attempt waits for its backoff instead of being retried by its status patch.
//! The same watch tells a running backup that its object was deleted (`stowage_operator::cancel`).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::StreamExt as _;
use kube::api::{Api, ListParams};
use kube::runtime::{Controller, WatchStreamExt as _, watcher};
use stowage_api::EtcdBackup;
use stowage_operator::Context;
use stowage_operator::cancel;

use crate::metrics::EtcdMetrics;

/// The controller's name: Events' reporting controller, Lease name, binary name.
pub const CONTROLLER: &str = "etcd-backup-ctrl";
/// Attempts before a backup with transient failures fails for good.
pub const MAX_ATTEMPTS: u32 = 5;

/// The kit's context plus this controller's metrics and retry limit.
pub struct EtcdContext {
    pub kit: Arc<Context>,
    pub metrics: EtcdMetrics,
    /// Attempts before a backup with transient failures fails for good.
    pub max_attempts: u32,
    /// Only EtcdBackups matching this label selector are reconciled (all when None), so
    /// several controllers (or tests) can share a cluster.
    pub selector: Option<String>,
}

impl AsRef<Context> for EtcdContext {
    fn as_ref(&self) -> &Context {
        &self.kit
    }
}

impl EtcdContext {
    /// Registers the controller's metrics in the kit's registry.
    pub fn new(kit: Arc<Context>) -> anyhow::Result<EtcdContext> {
        let metrics = EtcdMetrics::register(&kit.metrics.registry)?;
        Ok(EtcdContext {
            kit,
            metrics,
            max_attempts: MAX_ATTEMPTS,
            selector: None,
        })
    }
}

/// What wakes the reconciler: a new generation (spec edits) or the start of a deletion.
fn trigger(backup: &EtcdBackup) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    backup.metadata.generation.hash(&mut hasher);
    backup.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the controller until `ctx.kit.shutdown` is cancelled.
pub async fn run(ctx: Arc<EtcdContext>) -> anyhow::Result<()> {
    let backups: Api<EtcdBackup> = Api::all(ctx.kit.client.clone());
    backups.list(&ListParams::default().limit(1)).await.map_err(|error| {
        anyhow::anyhow!("listing EtcdBackups failed ({error}): is the CRD installed (deploy/crds)?")
    })?;
    let mut config = watcher::Config::default();
    // Tests share a cluster through this selector. An object whose label is removed leaves
    // the watch as if deleted, so its run is cancelled: it is no longer this controller's.
    if let Some(selector) = &ctx.selector {
        config = config.labels(selector);
    }
    // The registry sees every event, deletions included, before the trigger filter.
    let (stream, store, runs) = cancel::watch(backups, config);
    let stream = stream.predicate_filter(trigger, Default::default()).boxed();
    let controller = Controller::for_stream(stream, store);
    let shutdown = ctx.kit.shutdown.clone();
    stowage_operator::run_controller(controller, ctx, shutdown, move |backup, ctx| {
        crate::reconcile::reconcile(backup, ctx, runs.clone())
    })
    .await;
    Ok(())
}

/// Starts the controller on the kit's runner: what `main` calls.
pub async fn start(kit: Arc<Context>) -> anyhow::Result<()> {
    run(Arc::new(EtcdContext::new(kit)?)).await
}
