//! VolumeBackup reconciler.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use stowage_api::VolumeBackup;
use stowage_operator::{Context, Result};

/// Reconciles one VolumeBackup.
pub async fn reconcile(_backup: Arc<VolumeBackup>, _ctx: Arc<Context>) -> Result<Action> {
    Ok(Action::await_change())
}

/// Runs the VolumeBackup controller until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>) {
    let backups = Controller::new(ctx.watched::<VolumeBackup>(), watcher::Config::default());
    stowage_operator::run_controller(backups, ctx.clone(), ctx.shutdown.clone(), reconcile).await;
}
