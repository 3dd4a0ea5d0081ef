//! The claims a restore creates: made from the plan, labelled with the restore (so that a
//! restart recognises them and a rollback deletes only them), and awaited until bound.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use stowage_operator::{Error, Result};

use crate::restore_checks::{self as checks, PlannedVolume, RESTORE_LABEL, RESTORED_FROM_ANNOTATION};

/// Creates the claim of `volume` for restore `restore`; one this restore created before (a
/// restart) is fine, anyone else's is refused.
pub async fn create(
    pvcs: &Api<PersistentVolumeClaim>,
    volume: &PlannedVolume,
    backup: &str,
    restore: &str,
) -> Result<()> {
    let claim = new_claim(volume, backup, restore)?;
    match pvcs.create(&PostParams::default(), &claim).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = pvcs.get(&volume.pvc).await?;
            if existing.labels().get(RESTORE_LABEL) == Some(&checks::label_value(restore)) {
                Ok(())
            } else {
                Err(checks::refused(
                    "PVCNameTaken",
                    format!(
                        "PersistentVolumeClaim '{}' was created by someone else meanwhile",
                        volume.pvc
                    ),
                ))
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// Deletes the claims among `names` that restore `restore` created; returns their names.
pub async fn delete_ours(pvcs: &Api<PersistentVolumeClaim>, restore: &str, names: &[String]) -> Result<Vec<String>> {
    let selector = format!("{RESTORE_LABEL}={}", checks::label_value(restore));
    let ours = pvcs.list(&ListParams::default().labels(&selector)).await?;
    let mut deleted = Vec::new();
    for pvc in ours.items {
        let name = pvc.name_any();
        if !names.contains(&name) {
            continue;
        }
        match pvcs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(deleted)
}

/// The claim to create for `volume`, labelled with the restore and annotated with its origin.
fn new_claim(volume: &PlannedVolume, backup: &str, restore: &str) -> Result<PersistentVolumeClaim> {
    let modes = if volume.access_modes.is_empty() {
        vec!["ReadWriteOnce".to_string()]
    } else {
        volume.access_modes.clone()
    };
    let mut spec = serde_json::json!({
        "accessModes": modes,
        "resources": { "requests": { "storage": volume.capacity.clone().unwrap_or_else(|| "1Gi".into()) } },
    });
    if let Some(class) = &volume.storage_class {
        spec["storageClassName"] = class.clone().into();
    }
    if let Some(snapshot) = &volume.snapshot {
        spec["dataSource"] = serde_json::json!({
            "apiGroup": stowage_api::snapshot_storage::GROUP,
            "kind": "VolumeSnapshot",
            "name": snapshot,
        });
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": volume.pvc,
            "labels": { RESTORE_LABEL: checks::label_value(restore) },
            "annotations": { RESTORED_FROM_ANNOTATION: format!("{backup}/{}", volume.source_pvc) },
        },
        "spec": spec,
    }))
    .map_err(|error| Error::permanent("CreateFailed", format!("PVC {}: {error}", volume.pvc)))
}

/// Waits until claim `name` is bound (a claim from a snapshot is bound once its data is there).
pub async fn wait_bound(pvcs: &Api<PersistentVolumeClaim>, name: &str, timeout: Duration) -> Result<()> {
    let bound = async {
        loop {
            let pvc = pvcs.get(name).await?;
            if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
                return Ok::<(), Error>(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::time::timeout(timeout, bound).await.unwrap_or_else(|_| {
        Err(Error::permanent(
            "PVCNotBound",
            format!(
                "PVC '{name}' was not bound within {}s: see its Events",
                timeout.as_secs()
            ),
        ))
    })
}
