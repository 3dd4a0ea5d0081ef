//! The exec backup controller: an ExecBackup runs a dump command in a Pod made from its
//! template and streams the command's stdout through stowage-core (compress, encrypt, hash,
//! upload, manifest last); an ExecRestore streams a stored backup, verified, into a restore
//! command's stdin. Runs are one-shot, like Jobs: a failed run stays Failed with its reason,
//! and a BackupSchedule creates the next one. Deleting a run while it runs cancels it: the
//! command stops with its Pod, the upload is aborted, nothing is stored (see
//! `stowage_operator::cancel`).

mod backup;
mod restore;
mod run;

use std::sync::Arc;

use kube::runtime::{Controller, watcher};
use stowage_api::{ExecBackup, ExecRestore};
use stowage_operator::cancel;
use stowage_operator::{Context, run_controller};

pub use run::{FINALIZER, RUN_LABEL};

/// Runs both controllers until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    // A run is one long reconcile that watches its own Pod, so the controllers need no
    // watch on Pods: kube never reconciles the same object twice at once. The one watch of
    // each kind also tells its running runs that their object was deleted.
    let (stream, store, backup_runs) = cancel::watch(ctx.watched::<ExecBackup>(), watcher::Config::default());
    let backups = Controller::for_stream(stream, store);
    let (stream, store, restore_runs) = cancel::watch(ctx.watched::<ExecRestore>(), watcher::Config::default());
    let restores = Controller::for_stream(stream, store);
    // BackupStorages are cluster-wide: a controller confined to one namespace leaves their
    // probing to the cluster-wide ones.
    let storages = async {
        if ctx.watch_namespace.is_none() {
            stowage_operator::storage_status::run(ctx.clone()).await;
        }
    };
    tokio::join!(
        storages,
        run_controller(backups, ctx.clone(), ctx.shutdown.clone(), move |backup, ctx| {
            backup::reconcile(backup, ctx, backup_runs.clone())
        }),
        run_controller(restores, ctx.clone(), ctx.shutdown.clone(), move |restore, ctx| {
            restore::reconcile(restore, ctx, restore_runs.clone())
        }),
    );
    Ok(())
}
