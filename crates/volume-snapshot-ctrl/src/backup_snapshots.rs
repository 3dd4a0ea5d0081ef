//! The VolumeSnapshots of a backup: one per claim, created at once; waited for twice: first
//! for the cut (`creationTime`, the moment the data is fixed, after which the application may
//! thaw), then for `readyToUse`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use stowage_api::snapshot_storage::{VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec};
use stowage_api::volume_backup::VOLUME_BACKUP_LABEL;
use stowage_api::{VolumeBackup, VolumeStatus};
use stowage_operator::{Error, Result};

use crate::names;

/// How often the snapshots' status is read while waiting.
const POLL: Duration = Duration::from_millis(200);

/// Creates the snapshot of each volume that has none yet, and records its name. A snapshot of
/// the same name made by this backup (an earlier attempt) is reused; one made by anything else
/// is a conflict.
pub async fn create(client: &Client, backup: &VolumeBackup, volumes: &mut [VolumeStatus]) -> Result<()> {
    let namespace = backup.namespace().unwrap_or_default();
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &namespace);
    let label = names::label_value(&backup.name_any());
    for volume in volumes.iter_mut() {
        let name = names::child(&backup.name_any(), &volume.pvc, 253);
        let snapshot = VolumeSnapshot {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(BTreeMap::from([(VOLUME_BACKUP_LABEL.to_string(), label.clone())])),
                ..ObjectMeta::default()
            },
            spec: VolumeSnapshotSpec {
                source: VolumeSnapshotSource {
                    persistent_volume_claim_name: Some(volume.pvc.clone()),
                    volume_snapshot_content_name: None,
                },
                volume_snapshot_class_name: backup.spec.volume_snapshot_class_name.clone(),
            },
            status: None,
        };
        match api.create(&PostParams::default(), &snapshot).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = api.get(&name).await?;
                if existing.labels().get(VOLUME_BACKUP_LABEL) != Some(&label) {
                    return Err(Error::permanent(
                        "SnapshotNameTaken",
                        format!(
                            "VolumeSnapshot '{name}' exists and was not made by this VolumeBackup: delete it or rename the backup"
                        ),
                    ));
                }
            }
            Err(error) => return Err(error.into()),
        }
        volume.volume_snapshot = Some(name);
    }
    Ok(())
}

/// Waits until every snapshot has its cut point (or fails), recording the creation times.
pub async fn wait_cut(client: &Client, namespace: &str, volumes: &mut [VolumeStatus]) -> Result<()> {
    wait(client, namespace, volumes, |snapshot, volume| {
        let status = snapshot.status.as_ref();
        volume.creation_time = status.and_then(|s| s.creation_time.clone());
        volume.creation_time.is_some()
    })
    .await
}

/// Waits until every snapshot is ready to use (or fails), recording restore sizes.
pub async fn wait_ready(client: &Client, namespace: &str, volumes: &mut [VolumeStatus]) -> Result<()> {
    wait(client, namespace, volumes, |snapshot, volume| {
        let status = snapshot.status.as_ref();
        volume.ready_to_use = status.and_then(|s| s.ready_to_use) == Some(true);
        volume.restore_size = status.and_then(|s| s.restore_size.clone());
        if volume.creation_time.is_none() {
            volume.creation_time = status.and_then(|s| s.creation_time.clone());
        }
        volume.ready_to_use
    })
    .await
}

/// Polls each snapshot until `done` says so; a snapshot with an error or gone fails the wait.
/// No deadline here: the callers bound the wait (maxFreezeSeconds for the cut).
async fn wait<F>(client: &Client, namespace: &str, volumes: &mut [VolumeStatus], mut done: F) -> Result<()>
where
    F: FnMut(&VolumeSnapshot, &mut VolumeStatus) -> bool,
{
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), namespace);
    for volume in volumes.iter_mut() {
        let Some(name) = volume.volume_snapshot.clone() else {
            continue;
        };
        loop {
            let snapshot = api.get_opt(&name).await?.ok_or_else(|| {
                Error::permanent(
                    "SnapshotFailed",
                    format!("VolumeSnapshot '{name}' of PVC '{}' was deleted", volume.pvc),
                )
            })?;
            if let Some(message) = snapshot
                .status
                .as_ref()
                .and_then(|s| s.error.as_ref())
                .and_then(|e| e.message.clone())
            {
                return Err(Error::permanent(
                    "SnapshotFailed",
                    format!("VolumeSnapshot '{name}' of PVC '{}' failed: {message}", volume.pvc),
                ));
            }
            if done(&snapshot, volume) {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}
