#![allow(clippy::unwrap_used)]
//! VolumeRestore end to end: the controller in-process against the real apiserver, workloads
//! run by the node simulator, volumes and snapshots by the CSI simulator (host directories,
//! so the tests read the data where it lies).

mod support;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt as _;
use kube::api::Api;
use serde_json::json;
use stowage_api::{VolumeRestore, VolumeRestorePhase};
use stowage_e2e::{bed, wait_for};
use support::*;

/// The files the application wrote before the backup.
const BEFORE: &[(&str, &str)] = &[("records/1", "one\n"), ("records/2", "two\n"), ("state", "v1\n")];

/// Deployment `app` on PVC `data`, which holds the files [`BEFORE`]; returns the claim's host
/// directory.
async fn app_with_data(client: &kube::Client, namespace: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = pvc(client, namespace, "data").await?;
    write_files(&dir, BEFORE)?;
    deployment(client, namespace, "app", "data").await?;
    Ok(dir)
}

#[tokio::test]
async fn a_snapshot_restore_moves_the_deployment_onto_a_new_pvc_and_deletes_the_old_one() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vr-snapshot", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let old_dir = app_with_data(&client, &ns).await?;
        backup(
            &client,
            &ns,
            "nightly",
            json!({ "applicationRef": { "kind": "Deployment", "name": "app" } }),
        )
        .await?;
        // Written after the backup: must not come back.
        write_files(&old_dir, &[("state", "v2\n"), ("records/3", "three\n")])?;

        create::<VolumeRestore>(
            &client,
            &ns,
            "back-to-nightly",
            json!({
                "volumeBackupName": "nightly",
                "target": { "applicationRef": { "kind": "Deployment", "name": "app" } },
                "deleteOldPVCs": true,
            }),
        )
        .await?;
        let restore = finished::<VolumeRestore>(&client, &ns, "back-to-nightly").await?;
        let state = restore.status.clone().unwrap();
        assert_eq!(state.phase, VolumeRestorePhase::Succeeded, "{state:#?}");
        assert_eq!(state.previous_replicas, Some(1));
        let short_id: String = restore.metadata.uid.clone().unwrap().chars().take(5).collect();
        let new_pvc = format!("data-restored-{short_id}");
        assert_eq!(state.volumes.len(), 1);
        assert_eq!(state.volumes[0].source_pvc, "data");
        assert_eq!(state.volumes[0].pvc, new_pvc);
        assert!(
            state.volumes[0].restored && state.volumes[0].volume_snapshot.is_some(),
            "{state:#?}"
        );
        for step in [
            "Checked",
            "ScaledDown",
            "PVCsCreated",
            "Repointed",
            "ScaledUp",
            "OldPVCsDeleted",
            "Ready",
        ] {
            assert_eq!(condition(&state.conditions, step).0, "True", "{step}: {state:#?}");
        }

        // The Deployment and its running Pod mount the new claim, which holds the backed-up data.
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns).get("app").await?;
        let volumes = deployment.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        assert_eq!(volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name, new_pvc);
        wait_ready(&client, &ns, "Deployment", "app", 1).await?;
        assert_eq!(mounted_claims(&client, &ns, "app").await?, vec![new_pvc.clone()]);
        let new_dir = volume_dir(&client, &ns, &new_pvc).await?;
        let expected: std::collections::BTreeMap<String, String> =
            BEFORE.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect();
        assert_eq!(files(&new_dir), expected);

        // deleteOldPVCs: the old claim goes.
        wait_for("the old PVC to be deleted", || async {
            Ok((pvc_names(&client, &ns).await? == [new_pvc.clone()]).then_some(()))
        })
        .await?;
        wait_events(
            &client,
            &ns,
            "back-to-nightly",
            &[
                "RestoreStarted",
                "ScaledDown",
                "PVCsCreated",
                "Repointed",
                "ScaledUp",
                "OldPVCsDeleted",
                "RestoreSucceeded",
            ],
        )
        .await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn without_a_target_only_the_pvcs_are_created() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vr-pvcs-only", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let old_dir = app_with_data(&client, &ns).await?;
        backup(&client, &ns, "nightly", json!({ "pvcNames": ["data"] })).await?;
        write_files(&old_dir, &[("state", "v2\n")])?;
        let before = Api::<Deployment>::namespaced(client.clone(), &ns).get("app").await?;

        create::<VolumeRestore>(
            &client,
            &ns,
            "side-by-side",
            json!({ "volumeBackupName": "nightly", "pvcNameTemplate": "<pvc>-yesterday" }),
        )
        .await?;
        let restore = finished::<VolumeRestore>(&client, &ns, "side-by-side").await?;
        let state = restore.status.clone().unwrap();
        assert_eq!(state.phase, VolumeRestorePhase::Succeeded, "{state:#?}");
        assert_eq!(state.volumes[0].pvc, "data-yesterday");
        assert_eq!(state.previous_replicas, None);
        assert_eq!(condition(&state.conditions, "PVCsCreated").0, "True");
        assert_eq!(condition(&state.conditions, "ScaledDown").0, "");
        let new_dir = volume_dir(&client, &ns, "data-yesterday").await?;
        assert_eq!(files(&new_dir).get("state").map(String::as_str), Some("v1\n"));
        assert_eq!(files(&old_dir).get("state").map(String::as_str), Some("v2\n"));

        // The application was not touched.
        let after = Api::<Deployment>::namespaced(client.clone(), &ns).get("app").await?;
        assert_eq!(after.metadata.generation, before.metadata.generation);
        assert_eq!(mounted_claims(&client, &ns, "app").await?, ["data"]);
        assert_eq!(pvc_names(&client, &ns).await?, ["data", "data-yesterday"]);
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_taken_pvc_name_refuses_the_restore_and_changes_nothing() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vr-taken", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let old_dir = app_with_data(&client, &ns).await?;
        backup(
            &client,
            &ns,
            "nightly",
            json!({ "applicationRef": { "kind": "Deployment", "name": "app" } }),
        )
        .await?;
        pvc(&client, &ns, "data-copy").await?;
        let before = Api::<Deployment>::namespaced(client.clone(), &ns).get("app").await?;

        create::<VolumeRestore>(
            &client,
            &ns,
            "clash",
            json!({
                "volumeBackupName": "nightly",
                "pvcNameTemplate": "<pvc>-copy",
                "target": { "applicationRef": { "kind": "Deployment", "name": "app" } },
                "deleteOldPVCs": true,
            }),
        )
        .await?;
        let restore = finished::<VolumeRestore>(&client, &ns, "clash").await?;
        let state = restore.status.clone().unwrap();
        assert_eq!(state.phase, VolumeRestorePhase::Failed, "{state:#?}");
        let (status, reason, message) = condition(&state.conditions, "Checked");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "PVCNameTaken"),
            "{message}"
        );
        assert!(message.contains("'data-copy' already exists"), "{message}");
        let (_, ready_reason, ready_message) = condition(&state.conditions, "Ready");
        assert_eq!(ready_reason, "PVCNameTaken");
        assert!(ready_message.contains("nothing was changed"), "{ready_message}");
        assert_eq!(state.previous_replicas, None);
        wait_events(&client, &ns, "clash", &["RestoreRefused"]).await?;

        // Nothing changed: same Deployment spec, its Pod still on the old claim, no new claims.
        let after = Api::<Deployment>::namespaced(client.clone(), &ns).get("app").await?;
        assert_eq!(after.metadata.generation, before.metadata.generation);
        assert_eq!(after.spec, before.spec);
        assert_eq!(mounted_claims(&client, &ns, "app").await?, ["data"]);
        assert_eq!(pvc_names(&client, &ns).await?, ["data", "data-copy"]);
        assert_eq!(files(&old_dir).len(), BEFORE.len());
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_statefulset_with_two_replicas_is_restored_onto_two_new_pvcs() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vr-statefulset", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        statefulset(&client, &ns, "db", 2).await?;
        let dirs = [
            volume_dir(&client, &ns, "data-db-0").await?,
            volume_dir(&client, &ns, "data-db-1").await?,
        ];
        write_files(&dirs[0], &[("who", "replica 0\n")])?;
        write_files(&dirs[1], &[("who", "replica 1\n")])?;
        backup(
            &client,
            &ns,
            "nightly",
            json!({ "applicationRef": { "kind": "StatefulSet", "name": "db" } }),
        )
        .await?;
        for dir in &dirs {
            write_files(dir, &[("who", "changed\n")])?;
        }

        create::<VolumeRestore>(
            &client,
            &ns,
            "rewind",
            json!({
                "volumeBackupName": "nightly",
                "target": { "applicationRef": { "kind": "StatefulSet", "name": "db" } },
            }),
        )
        .await?;
        let restore = finished::<VolumeRestore>(&client, &ns, "rewind").await?;
        let state = restore.status.clone().unwrap();
        assert_eq!(state.phase, VolumeRestorePhase::Succeeded, "{state:#?}");
        assert_eq!(state.previous_replicas, Some(2));
        let short_id: String = restore.metadata.uid.clone().unwrap().chars().take(5).collect();
        let template = format!("data-restored-{short_id}");
        let mut pvcs: Vec<(String, String)> = state
            .volumes
            .iter()
            .map(|v| (v.source_pvc.clone(), v.pvc.clone()))
            .collect();
        pvcs.sort();
        assert_eq!(
            pvcs,
            [
                ("data-db-0".to_string(), format!("{template}-db-0")),
                ("data-db-1".to_string(), format!("{template}-db-1")),
            ]
        );

        // The StatefulSet now makes its claims from the renamed template, and its two Pods run
        // on the restored claims, each with its own replica's data.
        let statefulset = Api::<StatefulSet>::namespaced(client.clone(), &ns).get("db").await?;
        let spec = statefulset.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(
            spec.volume_claim_templates.unwrap()[0].metadata.name.as_deref(),
            Some(template.as_str())
        );
        wait_ready(&client, &ns, "StatefulSet", "db", 2).await?;
        assert_eq!(
            mounted_claims(&client, &ns, "db").await?,
            [format!("{template}-db-0"), format!("{template}-db-1")]
        );
        for ordinal in 0..2 {
            let dir = volume_dir(&client, &ns, &format!("{template}-db-{ordinal}")).await?;
            assert_eq!(files(&dir).get("who").cloned(), Some(format!("replica {ordinal}\n")));
        }
        // Without deleteOldPVCs the old claims stay.
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        assert!(pvcs.get_opt("data-db-0").await?.is_some() && pvcs.get_opt("data-db-1").await?.is_some());
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_copy_restore_fills_an_empty_pvc_with_the_same_files() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vr-copy", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let store = tempfile::tempdir()?;
        let storage = filesystem_storage(&client, &ns, store.path()).await?;
        let old_dir = app_with_data(&client, &ns).await?;
        write_files(&old_dir, &[("nested/deeper/file.bin", "\u{1}\u{2}binary-ish\n")])?;
        backup(
            &client,
            &ns,
            "offsite",
            json!({
                "applicationRef": { "kind": "Deployment", "name": "app" },
                "copy": { "storage": { "name": storage } },
            }),
        )
        .await?;
        let expected = tree(&old_dir);
        write_files(&old_dir, &[("state", "v2\n")])?;

        create::<VolumeRestore>(
            &client,
            &ns,
            "from-offsite",
            json!({
                "volumeBackupName": "offsite",
                "source": "Copy",
                "target": { "applicationRef": { "kind": "Deployment", "name": "app" } },
            }),
        )
        .await?;
        let restore = finished::<VolumeRestore>(&client, &ns, "from-offsite").await?;
        let state = restore.status.clone().unwrap();
        assert_eq!(state.phase, VolumeRestorePhase::Succeeded, "{state:#?}");
        let volume = &state.volumes[0];
        assert!(
            volume.artifact_path.is_some() && volume.volume_snapshot.is_none(),
            "{state:#?}"
        );
        // An empty claim (no dataSource), filled from storage.
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let claim = pvcs.get(&volume.pvc).await?;
        assert_eq!(claim.spec.unwrap().data_source, None);
        let new_dir = volume_dir(&client, &ns, &volume.pvc).await?;
        assert_eq!(tree(&new_dir), expected);
        wait_ready(&client, &ns, "Deployment", "app", 1).await?;
        assert_eq!(mounted_claims(&client, &ns, "app").await?, vec![volume.pvc.clone()]);
        // The old claim stays (no deleteOldPVCs), untouched.
        assert_eq!(files(&old_dir).get("state").map(String::as_str), Some("v2\n"));
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failure_after_the_scale_down_puts_the_old_claim_and_replicas_back() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vr-rollback", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let store = tempfile::tempdir()?;
        let storage = filesystem_storage(&client, &ns, store.path()).await?;
        let old_dir = app_with_data(&client, &ns).await?;
        let backup = backup(
            &client,
            &ns,
            "offsite",
            json!({
                "applicationRef": { "kind": "Deployment", "name": "app" },
                "copy": { "storage": { "name": storage } },
            }),
        )
        .await?;
        // Damage the stored copy: its manifest (what the checks read) is intact, so the restore
        // starts, scales the application down, and fails while filling the new claim.
        let artifact = backup.status.unwrap().volumes[0].artifact.clone().unwrap();
        let payload = store.path().join(&artifact.artifact.path);
        let mut bytes = std::fs::read(&payload)?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&payload, bytes)?;

        create::<VolumeRestore>(
            &client,
            &ns,
            "doomed",
            json!({
                "volumeBackupName": "offsite",
                "source": "Copy",
                "target": { "applicationRef": { "kind": "Deployment", "name": "app" } },
                "deleteOldPVCs": true,
            }),
        )
        .await?;
        let restore = finished::<VolumeRestore>(&client, &ns, "doomed").await?;
        let state = restore.status.clone().unwrap();
        assert_eq!(state.phase, VolumeRestorePhase::Failed, "{state:#?}");
        assert_eq!(condition(&state.conditions, "ScaledDown").0, "True", "{state:#?}");
        assert_eq!(state.previous_replicas, Some(1));
        let (rolling, reason, message) = condition(&state.conditions, "RollingBack");
        assert_eq!(
            (rolling.as_str(), reason.as_str()),
            ("False", "RolledBack"),
            "{message}"
        );
        assert!(
            message.contains("Deployment 'app' is back on its old claims"),
            "{message}"
        );
        assert!(message.contains("deleted the new PVCs"), "{message}");
        assert!(message.contains("scaled back to 1 ready replicas"), "{message}");
        for step in ["Repointed", "ScaledUp", "OldPVCsDeleted"] {
            assert_eq!(condition(&state.conditions, step).0, "", "{step}: {state:#?}");
        }

        // The application runs on its old claim again, and the half-filled new claim is gone.
        wait_ready(&client, &ns, "Deployment", "app", 1).await?;
        assert_eq!(mounted_claims(&client, &ns, "app").await?, ["data"]);
        wait_for("the new PVC to be deleted", || async {
            Ok((pvc_names(&client, &ns).await? == ["data"]).then_some(()))
        })
        .await?;
        assert_eq!(files(&old_dir).len(), BEFORE.len());
        wait_events(
            &client,
            &ns,
            "doomed",
            &["RestoreStarted", "ScaledDown", "RollingBack", "RestoreFailed"],
        )
        .await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restore_interrupted_after_the_scale_down_is_finished_by_the_next_controller() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vr-resume", |client, ns| async move {
        let old_dir = app_with_data(&client, &ns).await?;
        let controller = start_controller(&client, &ns).await?;
        let backup = backup(&client, &ns, "nightly", json!({ "pvcNames": ["data"] })).await?;
        drop(controller);
        write_files(&old_dir, &[("state", "v2\n")])?;

        // What a controller that died right after the scale-down leaves behind.
        create::<VolumeRestore>(
            &client,
            &ns,
            "interrupted",
            json!({
                "volumeBackupName": "nightly",
                "target": { "applicationRef": { "kind": "Deployment", "name": "app" } },
            }),
        )
        .await?;
        let restores: Api<VolumeRestore> = Api::namespaced(client.clone(), &ns);
        let uid = restores.get("interrupted").await?.metadata.uid.unwrap();
        let new_pvc = format!("data-restored-{}", &uid[..5]);
        let snapshot = backup.status.unwrap().volumes[0].volume_snapshot.clone();
        let now = "2026-01-01T00:00:00Z";
        let done = |type_: &str| json!({ "type": type_, "status": "True", "reason": type_, "message": "done before the controller died", "lastTransitionTime": now });
        let status = json!({ "status": {
            "phase": "Running",
            "previousReplicas": 1,
            "volumes": [{ "sourcePvc": "data", "pvc": new_pvc, "volumeSnapshot": snapshot, "restored": false }],
            "conditions": [done("Checked"), done("ScaledDown")],
        }});
        restores
            .patch_status("interrupted", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&status))
            .await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .patch(
                "app",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({ "spec": { "replicas": 0 } })),
            )
            .await?;
        wait_ready(&client, &ns, "Deployment", "app", 0).await?;

        let _controller = start_controller(&client, &ns).await?;
        let restore = finished::<VolumeRestore>(&client, &ns, "interrupted").await?;
        let state = restore.status.clone().unwrap();
        assert_eq!(state.phase, VolumeRestorePhase::Succeeded, "{state:#?}");
        wait_ready(&client, &ns, "Deployment", "app", 1).await?;
        assert_eq!(mounted_claims(&client, &ns, "app").await?, vec![new_pvc.clone()]);
        let new_dir = volume_dir(&client, &ns, &new_pvc).await?;
        assert_eq!(files(&new_dir).get("state").map(String::as_str), Some("v1\n"));
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn deleting_a_restore_waiting_for_its_workload_puts_the_application_back() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vr-cancel", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let store = tempfile::tempdir()?;
        let storage = filesystem_storage(&client, &ns, store.path()).await?;
        let old_dir = pvc(&client, &ns, "data").await?;
        write_files(&old_dir, BEFORE)?;
        let copy = json!({ "pvcNames": ["data"], "copy": { "storage": { "name": storage } } });
        backup(&client, &ns, "offsite", copy).await?;
        // The application only starts on a volume holding `ok`, which the copy lacks: on the
        // restored claim it never runs ready, so the restore is still waiting for it (for
        // minutes) when it is deleted.
        write_files(&old_dir, &[("ok", "yes\n")])?;
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": { "name": "app" },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": "app" } },
                "template": {
                    "metadata": { "labels": { "app": "app" } },
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{
                            "name": "app", "image": "debian:12",
                            "command": ["sh", "-c", "test -f /data/ok && exec sleep 100000"],
                            "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                        }],
                        "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }],
                    },
                },
            },
        }))?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&Default::default(), &deployment).await?;
        wait_ready(&client, &ns, "Deployment", "app", 1).await?;

        create::<VolumeRestore>(
            &client,
            &ns,
            "unwanted",
            json!({
                "volumeBackupName": "offsite",
                "source": "Copy",
                "target": { "applicationRef": { "kind": "Deployment", "name": "app" } },
                "deleteOldPVCs": true,
            }),
        )
        .await?;
        let restores: Api<VolumeRestore> = Api::namespaced(client.clone(), &ns);
        let state = wait_for("the restore to re-point the workload and scale it up", || async {
            let state = restores.get("unwanted").await?.status.unwrap_or_default();
            let repointed = condition(&state.conditions, "Repointed").0 == "True";
            Ok(repointed.then_some(state))
        })
        .await?;
        let new_pvc = state.volumes[0].pvc.clone();
        wait_for("the application to try the restored claim", || async {
            Ok(mounted_claims(&client, &ns, "app")
                .await?
                .contains(&new_pvc)
                .then_some(()))
        })
        .await?;

        restores.delete("unwanted", &Default::default()).await?;
        wait_for("the VolumeRestore to be deleted", || async {
            Ok(restores.get_opt("unwanted").await?.is_none().then_some(()))
        })
        .await?;
        // The wait for the workload was cancelled and the restore rolled back, minutes before
        // its timeout.
        wait_events(&client, &ns, "unwanted", &["RollingBack", "RestoreCancelled"]).await?;
        let events = stowage_e2e::support::events(&client, &ns, "unwanted").await?;
        let (_, message) = events.iter().find(|(reason, _)| reason == "RestoreCancelled").unwrap();
        assert!(message.contains("was deleted during its restore"), "{message}");
        assert!(
            message.contains("Deployment 'app' is back on its old claims"),
            "{message}"
        );
        assert!(
            message.contains(&format!("deleted the new PVCs {new_pvc}")),
            "{message}"
        );
        assert!(message.contains("scaled back to 1 ready replicas"), "{message}");

        // The application runs on its old claim with its former replica, the new claim and
        // the fill Pod are gone, and the old data is untouched.
        wait_ready(&client, &ns, "Deployment", "app", 1).await?;
        assert_eq!(deployments.get("app").await?.spec.unwrap().replicas, Some(1));
        assert_eq!(mounted_claims(&client, &ns, "app").await?, ["data"]);
        wait_for("the new PVC to be deleted", || async {
            Ok((pvc_names(&client, &ns).await? == ["data"]).then_some(()))
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let others: Vec<String> = pods
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|p| p.labels().get("app").map(String::as_str) != Some("app"))
            .map(|p| p.name_any())
            .collect();
        assert_eq!(others, Vec::<String>::new(), "temporary Pods left");
        assert_eq!(files(&old_dir).len(), BEFORE.len() + 1);
        Ok(())
    })
    .await
    .unwrap();
}
