//! VolumeRestore reconciler (placeholder until the restore side lands).

use std::sync::Arc;

use kube::runtime::controller::Action;
use stowage_api::VolumeRestore;
use stowage_operator::{Context, Result};

/// Reconciles one VolumeRestore.
pub async fn reconcile(_restore: Arc<VolumeRestore>, _ctx: Arc<Context>) -> Result<Action> {
    Ok(Action::await_change())
}

/// Runs the VolumeRestore controller until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>) {
    let restores = kube::runtime::Controller::new(
        ctx.watched::<VolumeRestore>(),
        kube::runtime::watcher::Config::default(),
    );
    stowage_operator::run_controller(restores, ctx.clone(), ctx.shutdown.clone(), reconcile).await;
}
