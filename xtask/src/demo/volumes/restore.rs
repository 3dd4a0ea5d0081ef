//! The restore part of the volumes step: a VolumeRestore puts the application back on its
//! snapshot. The controller checks first (snapshot ready, new name free, Deployment there),
//! scales the Deployment to zero, makes a new PVC from the snapshot, points the Deployment at
//! it and scales it back; the old PVC stays (deleteOldPVCs: false). The restored volume must
//! start with exactly the records of the snapshot.

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use stowage_api::{VolumeRestore, VolumeRestorePhase};
use stowage_e2e::bed::{TestBed, wait_for};
use stowage_e2e::support::{finished, volume_dir};

use super::{APP, BACKUP, BackedUp, NAMESPACE, PVC, apply, count_records, print_events};
use crate::demo::Demo;

const RESTORE: &str = "ledger-rollback";

pub async fn restore(bed: &TestBed, demo: &Demo, client: &kube::Client, backed_up: &BackedUp) -> anyhow::Result<()> {
    eprintln!("==> VolumeRestore {RESTORE}: Deployment {APP} back to VolumeBackup {BACKUP}'s snapshot");
    let started = std::time::Instant::now();
    apply(
        client,
        json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "VolumeRestore",
            "metadata": { "name": RESTORE },
            "spec": {
                "volumeBackupName": BACKUP,
                "source": "Snapshot",
                "target": { "applicationRef": { "kind": "Deployment", "name": APP } },
                "deleteOldPVCs": false,
            },
        }),
    )
    .await?;
    let restore: VolumeRestore = finished(client, NAMESPACE, RESTORE).await?;
    let took = started.elapsed();
    let status = restore.status.clone().unwrap_or_default();
    anyhow::ensure!(
        status.phase == VolumeRestorePhase::Succeeded,
        "the restore failed: {status:#?}"
    );
    println!("{}", bed.kubectl(["get", "volumerestores", "-n", NAMESPACE]).await?);
    println!("{}", bed.kubectl(["get", "pvc", "-n", NAMESPACE]).await?);
    print_events(bed, RESTORE, "RestoreSucceeded").await?;

    let volume = status.volumes.first().context("the restore has a volume")?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deployment = deployments.get(APP).await?;
    let claims: Vec<String> = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.volumes)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
        .collect();
    anyhow::ensure!(
        claims == [volume.pvc.clone()],
        "Deployment {APP} mounts {claims:?}, not {}",
        volume.pvc
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod = wait_for("the application's Pod to run on the restored PVC", || async {
        let pods = pods.list(&ListParams::default().labels(&format!("app={APP}"))).await?;
        Ok(pods.items.into_iter().find(|p| {
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let on_new = p.spec.iter().flat_map(|s| s.volumes.iter().flatten()).any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == volume.pvc)
            });
            running && on_new && p.metadata.deletion_timestamp.is_none()
        }))
    })
    .await?;

    // The restored volume holds the snapshot's records, in order: the same lines as the copy
    // the backup part decrypted and untarred.
    let restored_dir = volume_dir(client, NAMESPACE, &volume.pvc).await?;
    let restored = std::fs::read_to_string(restored_dir.join("records"))?;
    let copied = std::fs::read_to_string(demo.dir.join("volumes-copy").join("records"))?;
    anyhow::ensure!(
        restored.starts_with(&copied),
        "the restored volume does not start with the snapshot's records"
    );
    let restored_records = count_records(&restored_dir);
    anyhow::ensure!(
        restored_records >= backed_up.records_at_cut,
        "the restored volume has {restored_records} records, the snapshot {}",
        backed_up.records_at_cut
    );
    let old_records = count_records(&backed_up.live_dir);

    println!("| step | result |");
    println!("|---|---|");
    for condition in &status.conditions {
        if condition.status == "True" && condition.type_ != "Ready" {
            println!("| {} | {} |", condition.type_, condition.message);
        }
    }
    println!(
        "| restored volume | PVC `{}` from VolumeSnapshot `{}`: starts with the {} records of the snapshot, and the application goes on from there ({} records now) |",
        volume.pvc,
        volume.volume_snapshot.as_deref().unwrap_or("?"),
        backed_up.records_at_cut,
        count_records(&restored_dir)
    );
    println!(
        "| application | Pod `{}` runs on `{}`; the old PVC `{PVC}` is kept with its {old_records} records (deleteOldPVCs: false) |",
        kube::ResourceExt::name_any(&pod),
        volume.pvc
    );
    println!(
        "| restore run | {:.1} s (checks, scale to 0, PVC from the snapshot, re-point, scale back to {}) |",
        took.as_secs_f64(),
        status.previous_replicas.unwrap_or(1)
    );
    Ok(())
}
