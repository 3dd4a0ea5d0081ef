//! Deleting what a VolumeBackup made: the snapshots of a failed backup (an incomplete set is
//! no backup), and with `retainPolicy: Delete` the snapshots and copies before the object goes.

use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use stowage_api::VolumeBackup;
use stowage_api::snapshot_storage::VolumeSnapshot;
use stowage_api::volume_backup::VOLUME_BACKUP_LABEL;
use stowage_operator::{Context, Error, Result, finalizer, resolve_storage};

use crate::backup::FINALIZER;
use crate::names;

/// Deletes every VolumeSnapshot labelled with `backup` (found by label, so one whose name
/// never reached the status goes too).
pub async fn delete_snapshots(client: &Client, namespace: &str, backup: &VolumeBackup) -> Result<Vec<String>> {
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{VOLUME_BACKUP_LABEL}={}", names::label_value(&backup.name_any()));
    let mut deleted = Vec::new();
    for snapshot in api.list(&ListParams::default().labels(&selector)).await?.items {
        let name = snapshot.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(deleted)
}

/// `retainPolicy: Delete`: the copies and the snapshots go first, then the finalizer.
pub async fn delete_data(backup: &VolumeBackup, api: &Api<VolumeBackup>, ctx: &Context) -> Result<Action> {
    if !finalizer::has(backup, FINALIZER) {
        return Ok(Action::await_change());
    }
    let namespace = backup.namespace().unwrap_or_default();
    let volumes = backup.status.as_ref().map(|s| s.volumes.clone()).unwrap_or_default();
    for artifact in volumes.iter().filter_map(|v| v.artifact.as_ref()) {
        let deleted = async {
            let storage = resolve_storage(ctx, &artifact.storage, Some(&namespace)).await?;
            stowage_core::catalog::delete(storage.store.as_ref(), &artifact.artifact.path).await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(error) = deleted {
            let message = format!("deleting {} failed: {error}", artifact.artifact.path);
            ctx.warning(backup, "DeleteFailed", message).await;
            return Err(error);
        }
        let message = format!("deleted {} from storage {}", artifact.artifact.path, artifact.storage);
        ctx.normal(backup, "DataDeleted", message).await;
    }
    let deleted = delete_snapshots(&ctx.client, &namespace, backup).await?;
    if !deleted.is_empty() {
        ctx.normal(
            backup,
            "SnapshotsDeleted",
            format!("deleted VolumeSnapshot(s) {}", deleted.join(", ")),
        )
        .await;
    }
    finalizer::remove(api, backup, FINALIZER).await?;
    Ok(Action::await_change())
}
