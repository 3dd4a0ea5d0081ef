//! The volume snapshot controller: a VolumeBackup freezes an application through its Pods'
//! hooks, cuts one CSI VolumeSnapshot per PVC, thaws it at once, waits for the snapshots and
//! optionally copies each one's files through stowage-core into a BackupStorage; a
//! VolumeRestore makes new PVCs from them and re-points the workload.

mod backup;
mod backup_cleanup;
mod backup_snapshots;
mod backup_status;
mod copy;
mod hooks;
mod names;
mod restore;
mod restore_cancel;
mod restore_checks;
mod restore_claims;
mod restore_fill;
mod restore_plan;
mod restore_workload;
mod targets;

pub use backup::FINALIZER;

use std::sync::Arc;

use stowage_operator::Context;

/// Runs both controllers until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    // BackupStorages are cluster-wide: a controller confined to one namespace leaves their
    // probing to the cluster-wide ones.
    let storages = async {
        if ctx.watch_namespace.is_none() {
            stowage_operator::storage_status::run(ctx.clone()).await;
        }
    };
    tokio::join!(storages, backup::run(ctx.clone()), restore::run(ctx.clone()));
    Ok(())
}
