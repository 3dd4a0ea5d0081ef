//! Stowage's resource backup controller: the objects a ResourceSet selects, streamed as a
//! tar of JSON files (some encrypted the way the API server encrypts them at rest) into
//! stowage-core's data path, and restored from there in dependency order with
//! ownerReferences re-linked to the new owners.

mod apply;
pub mod archive;
pub mod backup;
mod backup_ctrl;
pub mod encryption;
pub mod error;
pub mod index;
pub mod metrics;
pub mod plan;
pub mod prune;
pub mod reader;
mod reconcile;
pub mod restore;
mod restore_ctrl;
mod restore_stop;
pub mod schedule;
pub mod segments;
pub mod selector;
mod waits;

pub use error::{Error, Result};

use std::sync::Arc;

use kube::runtime::{Controller, watcher};
use stowage_api::{ResourceBackup, ResourceRestore};
use stowage_operator::cancel;
use stowage_operator::{Context, run_controller};

pub use backup_ctrl::FINALIZER;

/// The kit's context plus this controller's metrics.
pub struct ResourceContext {
    pub kit: Arc<Context>,
    pub metrics: metrics::ResourceMetrics,
}

impl AsRef<Context> for ResourceContext {
    fn as_ref(&self) -> &Context {
        &self.kit
    }
}

/// Runs the ResourceBackup and ResourceRestore controllers until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    run_selected(ctx, None).await
}

/// [`run`] for the objects matching `label_selector` only (tests sharing one cluster each
/// reconcile their own cluster-scoped objects).
pub async fn run_selected(kit: Arc<Context>, label_selector: Option<&str>) -> anyhow::Result<()> {
    let ctx = Arc::new(ResourceContext {
        metrics: metrics::ResourceMetrics::register(&kit.metrics.registry)?,
        kit,
    });
    let config = match label_selector {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    // Each run is one long reconcile; kube never reconciles the same object twice at once.
    let client = ctx.kit.client.clone();
    let backups = Controller::new(kube::Api::<ResourceBackup>::all(client.clone()), config.clone());
    // The one watch of restores also tells a running restore that its object was deleted.
    // Tests share a cluster through the label selector: an object whose label is removed
    // leaves the watch as if deleted, so its run is cancelled (it is no longer this one's).
    let (stream, store, runs) = cancel::watch(kube::Api::<ResourceRestore>::all(client), config);
    let restores = Controller::for_stream(stream, store);
    let shutdown = ctx.kit.shutdown.clone();
    tokio::join!(
        run_controller(backups, ctx.clone(), shutdown.clone(), backup_ctrl::reconcile),
        run_controller(restores, ctx.clone(), shutdown, move |restore, ctx| {
            restore_ctrl::reconcile(restore, ctx, runs.clone())
        }),
    );
    Ok(())
}
